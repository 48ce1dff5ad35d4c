"""write_report: every file, image links, escaping, strict JSON, and a run with nothing measured."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from pianoray.report.document import write_report
from tests.report.conftest import add_search, make_results, strip_optional

EXPECTED_IMAGES = {"per_dimension.png", "timeline.png", "learning_curves_round1.png", "learning_curves_round2.png"}


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.img_src: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.img_src.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    results = make_results()
    results["experiments"][2]["name"] = "S1<script>alert(1)</script>"  # a reference with a hostile name
    results["experiments"][3]["r2"]["mean"] = float("nan")
    out = tmp_path_factory.mktemp("report")
    return results, out, write_report(results, out)


def test_writes_every_file(written):
    _, out, paths = written
    assert {p.name for p in paths.values()} == EXPECTED_IMAGES | {"report.md", "report.html", "results.json"}
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths.values())
    assert not list(out.glob(".*.tmp"))


def test_markdown_references_every_image_and_has_the_sections(written):
    _, _, paths = written
    md = paths["markdown"].read_text()
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)) == EXPECTED_IMAGES
    for heading in ("## Summary", "## Selection: margins and references", "## Comparison per track", "### Audio track", "### Symbolic track",
                    "## Per-dimension pairwise accuracy", "## Learning curves", "## Elimination timeline",
                    "## Round-1 decisions", "## Per-fold results", "## Resource hours", "## Published anchors"):
        assert heading in md, heading
    assert "Audio winner: A1. A1 has the best mean pairwise accuracy (80.1%)" in md
    assert "robustness drop 21%" in md
    assert "| 0.397 |" in md and "| 0.537 |" in md and "84%" in md and "not comparable" in md
    assert "more than the 10-point gap" in md


def test_html_is_escaped_and_self_contained(written):
    _, out, paths = written
    doc = paths["html"].read_text()
    assert "<script>" not in doc and "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert "demo-&lt;run&gt;" in doc
    parser = _Collector()
    parser.feed(doc)
    assert "script" not in parser.tags and "link" not in parser.tags  # no external CSS or scripts
    assert set(parser.img_src) == EXPECTED_IMAGES and all((out / s).is_file() for s in parser.img_src)
    # 2 comparisons, margins, references, decisions, folds, resources, anchors
    assert parser.tags.count("table") == 8
    assert "S1<script>alert(1)</script> (ref)" in "".join(parser.text)  # the text survives, as text


def test_markdown_escapes_the_hostile_name(written):
    _, _, paths = written
    md = paths["markdown"].read_text()
    assert "<script>" not in md and "S1\\<script\\>alert(1)\\</script\\> (ref)" in md


def test_results_json_is_strict_and_complete(written):
    results, _, paths = written
    text = paths["json"].read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["winners"] == results["winners"]
    assert loaded["experiments"][3]["r2"]["mean"] is None
    assert len(loaded["curves"]) == len(results["curves"])


def test_report_with_nothing_measured_still_renders(tmp_path, run_results):
    paths = write_report(strip_optional(run_results), tmp_path)
    md = paths["markdown"].read_text()
    assert "Audio: no winner selected." in md and "| A1 | — | — |" in md
    assert "CPU-hours" in md  # no GPU recorded anywhere
    assert {p.name for p in paths.values()} >= EXPECTED_IMAGES


def test_rewrite_overwrites_in_place(tmp_path, run_results):
    write_report(strip_optional(run_results), tmp_path)
    paths = write_report(run_results, tmp_path)
    assert "Audio winner: A1" in paths["markdown"].read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def test_empty_results_dict(tmp_path):
    paths = write_report({}, tmp_path)
    md = paths["markdown"].read_text()
    assert "No experiments recorded yet." in md and "No track recorded yet: no winner selected." in md


def test_summary_states_each_winners_margin_and_whether_it_beats_its_reference(run_results, tmp_path):
    md = write_report(run_results, tmp_path)["markdown"].read_text()
    assert "A1 had no runner-up: it was the only candidate of the audio track in Round 2." in md
    assert "A1 has no reference to beat" in md
    assert ("S2H against the best reference, S1, on the test parts (reported, never used to choose): +5.0 points "
            "(95% CI +1.2 to +8.8; 4 folds, 48 passages): beats it.") in md
    assert "R2 decides only between candidates within 0.5 points of the leader" in md

    # a close race: the margin's CI covers 0, and the report calls it a statistical tie
    run_results["selection"]["audio"]["margin"].update(runner_up="A3", runner_up_mean=0.797, gap_points=0.4,
                                                       ci_points=[-2.1, 2.9], folds=4, passages=48,
                                                       statistical_tie=True)
    run_results["selection"]["symbolic"]["versus_reference"].update(gap_points=-0.5, ci_points=[-3.0, 2.0],
                                                                    verdict="no clear difference", beats=False)
    md = write_report(run_results, tmp_path)["markdown"].read_text()
    assert ("Margin of A1 over the runner-up A3 on the inner validation splits: +0.4 points (95% CI -2.1 to +2.9; "
            "4 folds, 48 passages): a statistical tie") in md
    assert "on the test parts (reported, never used to choose): -0.5 points" in md
    assert "no clear difference (the CI covers 0)" in md


def test_search_section_only_for_a_searched_run(run_results, tmp_path):
    for e in run_results["experiments"][1:]:
        e["search"] = None  # as a search-era results dict says "not searched"; A1's row lacks the key (older)
    plain = write_report(run_results, tmp_path / "plain")
    for text in (plain["markdown"].read_text(), plain["html"].read_text()):
        assert "Round-1 search" not in text and "Search:" not in text
    assert not any(k.startswith("importance_") for k in plain)

    add_search(run_results, importance={"optim.lr": 0.8, "model.lora.rank": 0.2})
    paths = write_report(run_results, tmp_path / "searched")
    md = paths["markdown"].read_text()
    assert md.index("## Round-1 decisions") < md.index("## Round-1 search") < md.index("## Per-fold results")
    assert "### Search: A1" in md
    assert "| Configuration | rank | lr | dropout | State | Rung | Pairwise | Epochs | GPU-hours |" in md
    assert "| A1.c0 | 31 | 5.80e-03 | 0.123 | stopped at rung 3 | 3 | 61.2% | 3 | 0.05 |" in md
    assert "| **A1.c1 (best)** | **36** |" in md
    assert "A1.c1 went to Round 2 as A1. Parameter importance" in md and "lr 80%, rank 20%" in md
    assert "![Parameter importance, A1](importance_A1.png)" in md and paths["importance_A1"].is_file()

    parser = _Collector()
    parser.feed(paths["html"].read_text())
    assert parser.tags.count("table") == 9  # the 8 of a plain report and A1's search table
    assert "importance_A1.png" in parser.img_src
    assert "Search: A1" in parser.text and "stopped at rung 3" in parser.text
