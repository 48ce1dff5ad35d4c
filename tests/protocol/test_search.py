"""Round-1 search (pianoray.protocol.search): drawing configurations from seeded Optuna studies, resuming them
without repeats or losses, telling outcomes (PRUNED with rung-stepped values), choosing what Round 2 takes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pyarrow.fs as pafs
import pytest
from optuna.trial import TrialState

from pianoray.config import ConfigError, ProtocolConfig, load_config
from pianoray.protocol import search
from pianoray.protocol.search import Candidate, ConfigOutcome, StudyJournals
from pianoray.protocol.storage import RunStorage

SPACE = {
    "model.lora.rank": {"type": "int", "low": 16, "high": 64, "log": True},
    "model.lora.dropout": {"type": "float", "low": 0.0, "high": 0.2},
    "optim.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
}


def protocol(configs: int = 4, seed: int | None = 7, space: dict | None = None) -> ProtocolConfig:
    return ProtocolConfig.model_validate({"experiments": {
        "A1": {"model": {"lora": {"rank": 16, "alpha": 16, "rslora": True}},
               "search": {"configs": configs, "seed": seed, "space": space or SPACE}},
        "audio-frozen": {},
    }})


def journals(tmp_path: Path, name: str = "run") -> StudyJournals:
    return StudyJournals(RunStorage(tmp_path / "runs", name, fsync=False))


# ------------------------------------------------------------------------------------------------ config


def write(tmp_path: Path, experiment: str) -> Path:
    y = tmp_path / "c.yaml"
    y.write_text(f"experiments:\n  A1:\n{experiment}")
    return y


def test_a_search_space_out_of_its_fields_names_the_field(tmp_path: Path) -> None:
    y = write(tmp_path, "    search:\n      configs: 2\n      space:\n"
                        "        model.lora.rnk: {type: int, low: 16, high: 64}\n"
                        "        model.lora.dropout: {type: float, low: 0.0, high: 2.0}\n"
                        "        optim.lrr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    with pytest.raises(ConfigError) as e:
        load_config(y)
    lines = str(e.value).splitlines()
    assert f"{y}: experiments.A1.search.space.model.lora.rnk: 16: Extra inputs are not permitted" in lines
    assert f"{y}: experiments.A1.search.space.model.lora.dropout: 2.0: Input should be less than 1" in lines
    assert f"{y}: experiments.A1.search.space.optim.lrr: 0.0001: Extra inputs are not permitted" in lines


@pytest.mark.parametrize("param, message", [
    ("{type: float, low: 0, high: 1.0e-2, log: true}", "a log-scale range must be positive"),
    ("{type: int, low: 64, high: 16}", "low (64.0) must be below high (16.0)"),
    ("{type: categorical, choices: [64, 128], low: 1}", "a categorical parameter takes 'choices' only"),
    ("{type: categorical}", "needs a non-empty 'choices' list"),
    ("{type: int, low: 1.5, high: 4}", "an int parameter needs integer low and high"),
    ("{type: float, low: 1, high: 2, sep: 1}", "Extra inputs are not permitted"),
])
def test_a_bad_distribution_names_the_parameter(tmp_path: Path, param: str, message: str) -> None:
    y = write(tmp_path, f"    search:\n      configs: 2\n      space:\n        optim.lr: {param}\n")
    with pytest.raises(ConfigError, match=r"experiments\.A1\.search\.space\.optim\.lr") as e:
        load_config(y)
    assert message in str(e.value)


def test_an_experiment_named_like_a_configuration_is_refused(tmp_path: Path) -> None:
    y = write(tmp_path, "    search:\n      configs: 2\n      space:\n"
                        "        optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2}\n  A1.c1: {encoder: A1}\n")
    with pytest.raises(ConfigError, match=r"experiments\.A1\.c1: the name of configuration 1 of A1's search"):
        load_config(y)


def test_only_an_experiments_own_fields_are_searched(tmp_path: Path) -> None:
    y = write(tmp_path, "    search:\n      configs: 2\n      space:\n        data.k: {type: int, low: 2, high: 5}\n")
    with pytest.raises(ConfigError, match="'data.k': a searched field is one of model.<field>, optim.<field>"):
        load_config(y)


# ------------------------------------------------------------------------------------------------ drawing


def test_draw_gives_each_configuration_once_in_range_and_stable(tmp_path: Path) -> None:
    cfg, j = protocol(), journals(tmp_path)
    drawn = search.draw(cfg, j, "A1")
    assert [c.name for c in drawn] == ["A1.c0", "A1.c1", "A1.c2", "A1.c3"]
    for c in drawn:
        assert 16 <= c.params["model.lora.rank"] <= 64 and isinstance(c.params["model.lora.rank"], int)
        assert 1e-5 <= c.params["optim.lr"] <= 1e-2
    assert len({tuple(sorted(c.params.items())) for c in drawn}) == 4
    # a second session reads them back: no new trial in the study
    assert search.draw(cfg, j, "A1") == drawn
    assert len(j.study("A1").trials) == 4
    assert (tmp_path / "runs" / "run" / "optuna" / "A1.journal").is_file()


def test_a_kill_between_asks_neither_repeats_nor_changes_configurations(tmp_path: Path) -> None:
    """The k-th configuration depends on (seed, k) only: a session killed after two asks resumes with the third
    the uninterrupted session would have drawn (a sampler seeded once would restart and propose the first)."""
    whole = search.draw(protocol(4), journals(tmp_path, "whole"), "A1")
    killed = journals(tmp_path, "killed")
    first = search.draw(protocol(2), killed, "A1")  # what the killed session got to ask
    resumed = search.draw(protocol(4), killed, "A1")
    assert resumed[:2] == first
    assert resumed == whole
    assert search.draw(protocol(4, seed=8), journals(tmp_path, "other"), "A1") != whole


def test_two_experiments_with_one_space_and_seed_draw_different_configurations(tmp_path: Path) -> None:
    cfg = ProtocolConfig.model_validate({"experiments": {
        x: {"search": {"configs": 2, "seed": 1, "space": {"optim.lr": SPACE["optim.lr"]}}} for x in ("A1", "A2")}})
    j = journals(tmp_path)
    a1, a2 = search.draw(cfg, j, "A1"), search.draw(cfg, j, "A2")
    assert [c.name for c in a2] == ["A2.c0", "A2.c1"]
    assert {c.params["optim.lr"] for c in a1}.isdisjoint(c.params["optim.lr"] for c in a2)


def test_with_candidates_sets_each_configuration_and_keeps_the_experiment_for_round_2() -> None:
    cfg = protocol(2)
    cands = [Candidate("A1.c0", "A1", 0, {"model.lora.rank": 40, "optim.lr": 1e-3}),
             Candidate("A1.c1", "A1", 1, {"model.lora.rank": 20, "optim.lr": 1e-4})]
    r1 = search.with_candidates(cfg, cands)
    assert list(r1.experiments) == ["A1", "A1.c0", "A1.c1", "audio-frozen"]
    assert r1.enabled_experiments() == ["A1.c0", "A1.c1", "audio-frozen"]
    assert r1.encoder_name("A1.c0") == "A1"
    assert r1.experiments["A1.c0"].model["lora"] == {"rank": 40, "alpha": 16, "rslora": True}
    assert r1.optim_for("A1.c1").lr == 1e-4 and r1.optim_for("A1.c1").batch_size == cfg.optim.batch_size
    assert r1.experiments["A1.c0"].search is None
    r2 = search.with_promoted(r1, {"A1": "A1.c1"})
    assert r2.experiments["A1"].enabled and r2.experiments["A1"].model == r1.experiments["A1.c1"].model
    assert r2.optim_for("A1").lr == 1e-4


# ------------------------------------------------------------------------------------------------ outcomes


def cand(k: int) -> Candidate:
    return Candidate(f"A1.c{k}", "A1", k, {"optim.lr": 10.0 ** -(k + 2)})


def rep(epoch: int, pw: float, r2: float = 0.0, stop: bool = False) -> dict:
    return {"val/pairwise_accuracy": pw, "val/r2": r2, "stop": stop, "epoch": epoch}


def test_outcomes_read_rungs_stops_and_errors() -> None:
    reports = {
        "A1.c0": {1: rep(1, 0.60), 2: rep(2, 0.62), 3: rep(3, 0.70), 4: rep(4, 0.71, 0.3, stop=True)},
        "A1.c1": {1: rep(1, 0.50), 2: rep(2, 0.51), 3: rep(3, 0.52)},  # stopped at rung 3
        "A1.c2": {1: rep(1, 0.66)},  # errored for good
        "A1.c3": {1: rep(1, 0.60), 2: rep(2, 0.65, 0.1, stop=True)},  # early-stopped before rung 3
        "A1.c4": {1: rep(1, 0.61)},  # still running (a killed session)
    }
    got = {o.candidate.name: o for o in search.outcomes([cand(k) for k in range(5)], [1, 3], 4, reports,
                                                        {"A1.c1": 3}, ["A1.c2"])}
    c0 = got["A1.c0"]
    assert (c0.state, c0.rungs, c0.rung, c0.value, c0.r2, c0.stopped_at, c0.epochs) == \
        ("complete", {1: 0.60, 3: 0.70, 4: 0.71}, 4, 0.71, 0.3, None, 4)
    assert (got["A1.c1"].state, got["A1.c1"].rungs, got["A1.c1"].stopped_at, got["A1.c1"].epochs) == \
        ("pruned", {1: 0.50, 3: 0.52}, 3, 3)
    assert (got["A1.c2"].state, got["A1.c2"].rung) == ("failed", 1)
    assert (got["A1.c3"].state, got["A1.c3"].rungs, got["A1.c3"].rung) == ("complete", {1: 0.60, 4: 0.65}, 4)
    assert got["A1.c4"].state == "running"


def outcome(k: int, state: str, rung: int | None, value: float | None, r2: float | None = None) -> ConfigOutcome:
    return ConfigOutcome(cand(k), state, {}, rung, value, r2)


def test_the_best_configuration_is_the_furthest_rung_then_accuracy_then_r2() -> None:
    results = [outcome(0, "complete", 4, 0.70, 0.1), outcome(1, "complete", 4, 0.70, 0.3),
               outcome(2, "pruned", 3, 0.90), outcome(3, "complete", 4, 0.69, 0.9),
               outcome(4, "failed", 1, 0.95)]
    assert [o.candidate.name for o in search.best(results, 3)] == ["A1.c1", "A1.c0", "A1.c3"]
    assert search.promotions(results, 1) == {"A1": "A1.c1"}
    assert search.promotions(results, 2) == {"A1": "A1.c1", "A1.c0": "A1.c0"}
    assert search.promotions([outcome(0, "pruned", 3, 0.9)], 1) == {}


def test_tell_records_stopped_configurations_as_pruned_at_the_rung_epochs(tmp_path: Path) -> None:
    cfg, j = protocol(4), journals(tmp_path)
    cands = search.draw(cfg, j, "A1")
    results = [
        ConfigOutcome(cands[0], "complete", {3: 0.61, 10: 0.70}, 10, 0.70),
        ConfigOutcome(cands[1], "pruned", {3: 0.48}, 3, 0.48, stopped_at=3),
        ConfigOutcome(cands[2], "failed", {}, None, None),
        ConfigOutcome(cands[3], "running", {3: 0.55}, 3, 0.55),
    ]
    search.tell(j, results)
    search.tell(j, results)  # idempotent: a resumed run tells again
    trials = {t.number: t for t in j.study("A1").trials}
    assert (trials[0].state, trials[0].value, trials[0].intermediate_values) == \
        (TrialState.COMPLETE, 0.70, {3: 0.61, 10: 0.70})
    assert (trials[1].state, trials[1].intermediate_values) == (TrialState.PRUNED, {3: 0.48})
    assert trials[2].state == TrialState.FAIL
    assert trials[3].state == TrialState.RUNNING  # still a trial of Ray's: left running, not orphaned
    assert search.importances(j, "A1") is None  # one completed configuration


def test_importances_over_completed_configurations(tmp_path: Path) -> None:
    cfg, j = protocol(6), journals(tmp_path)
    cands = search.draw(cfg, j, "A1")
    # the value follows the learning rate only: it should carry the importance
    search.tell(j, [ConfigOutcome(c, "complete", {}, 10, 0.5 + c.params["optim.lr"] * 30) for c in cands])
    imp = search.importances(j, "A1")
    assert imp is not None and set(imp) == set(SPACE)
    assert max(imp, key=imp.get) == "optim.lr"


# ------------------------------------------------------------------------------------------------ object storage


class _Remote(pafs.SubTreeFileSystem):
    """A filesystem RunStorage treats as object storage (not a LocalFileSystem), on a local folder."""


def test_an_object_storage_run_keeps_its_journal_there_and_restores_it(tmp_path: Path) -> None:
    (tmp_path / "bucket").mkdir()
    fs = _Remote(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    storage = RunStorage("runs", "r", filesystem=fs)
    j = StudyJournals(storage, cache=tmp_path / "cache-a")
    assert j.remote
    drawn = search.draw(protocol(3), j, "A1")
    assert (tmp_path / "bucket" / "runs" / "r" / "optuna" / "A1.journal").is_file()
    # another driver (an empty local cache) resumes: the stored journal comes back, nothing is asked again
    other = StudyJournals(storage, cache=tmp_path / "cache-b")
    assert search.draw(protocol(3), other, "A1") == drawn
    search.tell(other, [ConfigOutcome(drawn[0], "pruned", {3: 0.4}, 3, 0.4, stopped_at=3)])
    back = StudyJournals(storage, cache=tmp_path / "cache-c")
    back.restore("A1")
    assert back.study("A1").trials[0].state == TrialState.PRUNED
    other.clear()
    assert not list((tmp_path / "cache-b").rglob("*.journal"))


def test_optuna_opens_the_journal(tmp_path: Path) -> None:
    """What optuna-dashboard does: open the journal file with Optuna's own storage, no pianoray code."""
    search.draw(protocol(2), journals(tmp_path), "A1")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "runs" / "run" / "optuna" / "A1.journal")))
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["A1"]


# ------------------------------------------------------------------------------------------------ pianoray search


def test_alone_keeps_one_experiment_and_its_trials() -> None:
    cfg = search.alone(protocol(4), "A1", configs=2)
    assert cfg.enabled_experiments() == ["A1"] and cfg.experiments["A1"].search.configs == 2
    assert search.alone(protocol(4), "A1").experiments["A1"].search.configs == 4
    with pytest.raises(ConfigError, match="experiments.audio-frozen: no search: block"):
        search.alone(protocol(4), "audio-frozen")
    with pytest.raises(ConfigError, match="experiment 'A9' is not in the config"):
        search.alone(protocol(4), "A9")


def test_best_yaml_is_an_overlay_a_config_extends(tmp_path: Path) -> None:
    import yaml

    best = {"id": "A1.c2", "params": {"model.lora.rank": 40, "optim.lr": 1e-3}, "value": 0.7123, "rung": 10}
    text = search.best_yaml("A1", best, "runs/x")
    assert text.startswith("# pianoray search: the best configuration of A1, A1.c2 (validation pairwise 0.7123 "
                           "at rung 10)")
    assert yaml.safe_load(text) == {"experiments": {"A1": {"model": {"lora": {"rank": 40}}, "optim": {"lr": 1e-3}}}}
    (tmp_path / "best.yaml").write_text(text)
    (tmp_path / "c.yaml").write_text("extends: best.yaml\nexperiments:\n  A1: {model: {lora: {alpha: 8}}}\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.experiments["A1"].model["lora"] == {"rank": 40, "alpha": 8} and cfg.optim_for("A1").lr == 1e-3


def test_studies_in_a_database_when_round1_names_one(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    j = StudyJournals(RunStorage(tmp_path / "runs", "run", fsync=False), url=url)
    drawn = search.draw(protocol(3), j, "A1")
    assert search.draw(protocol(3), j, "A1") == drawn
    assert not (tmp_path / "runs" / "run" / "optuna").exists()  # nothing in the run folder
    name = f"{tmp_path / 'runs' / 'run'}/A1"
    assert optuna.get_all_study_names(url) == [name] and j.where("A1") == f"{url} (study {name})"
    search.tell(j, [ConfigOutcome(drawn[1], "pruned", {3: 0.4}, 3, 0.4, stopped_at=3)])
    assert optuna.load_study(study_name=name, storage=url).trials[1].state == TrialState.PRUNED
    other = StudyJournals(RunStorage(tmp_path / "runs", "other", fsync=False), url=url)
    search.draw(protocol(2), other, "A1")
    j.clear()  # --fresh forgets this run's studies only
    assert optuna.get_all_study_names(url) == [f"{tmp_path / 'runs' / 'other'}/A1"]


def test_a_study_storage_must_be_a_url() -> None:
    with pytest.raises(ValueError, match="study_storage"):
        ProtocolConfig.model_validate({"round1": {"study_storage": "studies.db"}})
