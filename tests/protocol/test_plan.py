import json

import pytest
from rich.console import Console

from pianoray.config import load_config
from pianoray.errors import InputError
from pianoray.models import registry
from pianoray.protocol.plan import (
    DEFAULT_THROUGHPUT,
    SEED_GPU_HOURS,
    ThroughputTable,
    plan,
    plan_json,
    samples_per_epoch,
)
from pianoray.settings import PROJECT_ROOT
from pianoray.terminal import render_plan

SCRIPTED = ThroughputTable.model_validate({
    "eval_speedup": 3.0,
    "devices": {"gpu": {"X": {"samples_per_s": 10.0}, "default": {"samples_per_s": 5.0}},
                "cpu": {"Y": {"samples_per_s": 2.0}}},
})
SIZES = {"T1": 100, "T2": 40, "T3": 20, "T4": 12}


def scripted_config(workers: int = 2):
    return load_config(None, {
        "name": "scripted",
        "data": {"k": 4, "val_fraction": 0.2},
        "round1": {"epochs": 10, "rungs": [4], "tiers": ["T1", "T2"]},
        "round2": {"epochs": 20, "folds": 4, "workers_per_fold": workers},
        "round3": {"enabled": False},
        "experiments": {"X": {"encoder": "audio-frozen", "resources": {"cpu": 8, "gpu": 1}},
                        "Y": {"encoder": "symbolic-features", "resources": {"cpu": 2}},
                        "Z": {"encoder": "audio-frozen", "enabled": False}},
    }, check_models=False)


def test_samples_per_epoch_by_hand():
    cfg = scripted_config()
    # T1: 100 x 3/4 x 0.8 = 60 train, 100 x 3/4 x 0.2 = 15 val; other tiers x 3/4.
    assert samples_per_epoch(cfg, SIZES, cfg.round1.tiers) == (60 + 30, 15)
    assert samples_per_epoch(cfg, SIZES, cfg.round2.tiers) == (60 + 54, 15)


def test_budget_equals_the_hand_computed_value():
    p = plan(scripted_config(), SCRIPTED, eliminated=0.5, sizes=SIZES)
    x, y = p.trials
    assert (x.experiment, x.device, x.samples_per_s, y.device, y.samples_per_s) == ("X", "gpu", 10.0, "cpu", 2.0)
    # Round 1 per epoch: X (90/10 + 15/30) s x 1 GPU; Y (90/2 + 15/6) s x 2 CPUs.
    assert x.epoch_hours == pytest.approx(9.5 / 3600) and y.epoch_hours == pytest.approx(95 / 3600)
    r1, r2 = p.rounds
    assert (r1.jobs_upper, r1.jobs_expected, r2.jobs_upper, r2.jobs_expected) == (2, 2, 8, 4)
    assert r1.upper_hours == pytest.approx({"gpu": 95 / 3600, "cpu": 950 / 3600})
    # Expected: both pay up to rung 4, half of the remaining 6 epochs: 7 epochs each.
    assert r1.expected_hours == pytest.approx({"gpu": 66.5 / 3600, "cpu": 665 / 3600})
    # Round 2 per epoch: X (114/10 + 0.5) s; Y (114/2 + 2.5) s x 2; x 20 epochs x 4 folds (the table has no
    # data-parallel entry: linear scaling assumed, so the 2 workers cancel out).
    assert r2.upper_hours == pytest.approx({"gpu": 11.9 * 80 / 3600, "cpu": 119 * 80 / 3600})
    assert r2.expected_hours == pytest.approx({"gpu": 11.9 * 40 / 3600, "cpu": 119 * 40 / 3600})
    assert p.total("upper")["gpu"] == pytest.approx((95 + 952) / 3600)
    assert (r1.seed_gpu_hours, r2.seed_gpu_hours) == (SEED_GPU_HOURS["round1"], SEED_GPU_HOURS["round2"])
    assert plan(scripted_config(), SCRIPTED, eliminated=0.0, sizes=SIZES).total("expected") == pytest.approx(
        p.total("upper"))


@pytest.mark.parametrize("yaml_name", ["protocol.yaml", "protocol-8gpu.yaml", "demo.yaml"])
def test_trial_counts_of_the_shipped_configs(yaml_name):
    cfg = load_config(PROJECT_ROOT / "experiments" / yaml_name, check_models=False)
    # fitted references (symbolic-gbm) have no Round-1 trial and no epochs: one fit per fold in Round 2
    fitted = [x for x in cfg.enabled_experiments() if registry.get(cfg.encoder_name(x)).kind == "fitted"]
    neural = [x for x in cfg.enabled_experiments() if x not in fitted]
    assert fitted == ["symbolic-gbm"]
    # a searched experiment screens each configuration in Round 1; Round 2 takes its best
    trials = sum(cfg.experiments[x].search.configs if cfg.experiments[x].search else 1 for x in neural)
    n, f = len(neural), len(fitted)
    p = plan(cfg, eliminated=0.5)
    r1, r2, r3 = p.rounds
    assert [t.experiment for t in p.trials] == neural
    assert (r3.name, r3.jobs_upper, r3.epochs) == ("round3", len(cfg.round3.fusions) * cfg.round3.folds,
                                                   cfg.round3.epochs)
    assert (r1.jobs_upper, r1.epochs) == (trials, cfg.round1.epochs)
    keep = (trials - trials // 2) / trials
    assert (r2.jobs_upper, r2.jobs_expected, r2.epochs) == ((n + f) * cfg.round2.folds,
                                                            (round(n * keep) + f) * cfg.round2.folds, cfg.round2.epochs)
    assert any("symbolic-gbm" in note for note in r2.notes)
    device = "cpu" if yaml_name == "demo.yaml" else "gpu"  # the protocol configs ask for 1 GPU per trial
    assert {t.device for t in p.trials} == {device}
    assert 0 < sum(p.total("expected").values()) <= sum(p.total("upper").values())


def test_search_configurations_are_round1_trials_and_round2_takes_the_best_k():
    cfg = scripted_config()
    cfg.experiments["X"].search = {"configs": 3, "space": {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    cfg.round2.configs_per_experiment = 2
    p = plan(cfg, SCRIPTED, eliminated=0.5, sizes=SIZES)
    r1, r2 = p.rounds
    # Round 1: X's 3 configurations and Y; 2 of the 4 expected to stop at rung 4 (keep = 1/2)
    assert (r1.jobs_upper, r1.jobs_expected) == (4, 4)
    assert r1.upper_hours == pytest.approx({"gpu": 3 * 95 / 3600, "cpu": 950 / 3600})
    assert r1.expected_hours == pytest.approx({"gpu": 3 * 66.5 / 3600, "cpu": 665 / 3600})
    # Round 2: X's 2 best and Y, 4 folds each; half of them expected
    assert (r2.jobs_upper, r2.jobs_expected) == (12, 8)
    assert r2.upper_hours == pytest.approx({"gpu": 2 * 11.9 * 80 / 3600, "cpu": 119 * 80 / 3600})
    assert any("X 3 configurations" in note for note in r1.notes)


def test_round3_prices_each_fused_track_at_its_most_expensive_candidate():
    cfg = scripted_config()
    cfg.experiments["X"].encoder, cfg.experiments["Y"].encoder = "A1", "S2"  # candidates now
    cfg.round3.enabled, cfg.round3.epochs = True, 10
    r3 = plan(cfg, SCRIPTED, eliminated=0.5, sizes=SIZES).rounds[2]
    # T1-T3: train 60 + 30 + 15 = 105, val 15. Frozen, the winners run forward only, at the evaluation rate (3x):
    # on the training samples every epoch of every fusion, X 105/30 s x 1 GPU = 3.5 GPU-s, Y 105/6 s x 2 CPUs =
    # 35 CPU-s; on the validation samples once per fold for all the fusions (X 0.5 GPU-s, Y 5 CPU-s). x 10 epochs
    # x 4 fusions, F-score reading Y twice (score and performance), x 4 folds (the table has no data-parallel
    # entry: efficiency 1)
    assert (r3.jobs_upper, r3.jobs_expected) == (16, 16)
    assert r3.upper_hours == pytest.approx({"gpu": (0.5 + 3.5 * 10 * 4) * 4 / 3600,
                                            "cpu": (5 * 2 + 35 * 10 * (3 + 2)) * 4 / 3600})
    assert "F-score runs the symbolic winner twice" in r3.notes[0]
    # unfreeze_lr: from the earliest plateau (after epoch 1 + patience 5) the winners train: their training epoch,
    # X (105/10 + 15/30) s x 1 GPU = 11 GPU-s, Y (105/2 + 15/6) s x 2 CPUs = 110 CPU-s; 6 frozen + 4 unfrozen epochs
    cfg.round3.unfreeze_lr = 1e-6
    r3 = plan(cfg, SCRIPTED, eliminated=0.5, sizes=SIZES).rounds[2]
    assert r3.upper_hours == pytest.approx({"gpu": (0.5 + (6 * 3.5 + 4 * 11) * 4) * 4 / 3600,
                                            "cpu": (5 * 2 + (6 * 35 + 4 * 110) * (3 + 2)) * 4 / 3600})
    assert "for the 4 epochs after the earliest plateau" in r3.notes[0]
    cfg.experiments["Y"].encoder = "symbolic-features"  # a reference: the symbolic track has no candidate
    assert plan(cfg, SCRIPTED, eliminated=0.5, sizes=SIZES).rounds[2].notes == [
        "skipped: no candidate of the symbolic track"]


def test_shipped_throughput_table_loads_and_falls_back_to_default():
    table = ThroughputTable.load(DEFAULT_THROUGHPUT)
    assert table.lookup("cpu", "A1").samples_per_s == pytest.approx(0.45)
    cpu2, gpu8 = table.scaling("cpu", 2), table.scaling("gpu", 8)
    assert 0 < cpu2.efficiency <= 1 and cpu2.source.startswith("measured: benchmarks/ddp_bench.py")
    assert gpu8.source.startswith("assumed:") and "gpu_check.py" in gpu8.source
    assert table.lookup("gpu", "no-such", "also-not") == table.devices["gpu"]["default"]
    with pytest.raises(KeyError, match="tpu"):
        table.lookup("tpu", "A1")


def test_bad_throughput_files_name_the_file_and_field(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"devices": {"cpu": {"A1": {"samples_per_s": 0}}}}))
    with pytest.raises(ValueError, match=r"t\.json: devices\.cpu\.A1\.samples_per_s"):
        ThroughputTable.load(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="t.json: not valid JSON"):
        ThroughputTable.load(bad)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        ThroughputTable.load(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="eliminated"):
        plan(scripted_config(), SCRIPTED, eliminated=1.0, sizes=SIZES)


def test_render_and_json():
    p = plan(scripted_config(), SCRIPTED, sizes=SIZES)
    console = Console(width=240, record=True)
    for r in render_plan(p):
        console.print(r)
    text = console.export_text()
    assert "2-4 GPU-h" in text and "8-20 GPU-h" in text and "round2" in text and "8 / 4" in text
    out = json.loads(json.dumps(plan_json(p, {})))
    assert out["rounds"][0]["jobs_upper"] == 2 and set(out["total_upper"]) <= {"gpu", "cpu"}


def test_calibration_on_the_demo_corpus_feeds_the_plan(tmp_path):
    from pianoray.data.demo import generate_demo
    from pianoray.protocol.plan import calibrate_throughput
    from pianoray.validation import prepare_data

    root = generate_demo(tmp_path / "demo", seed=1, scale=0.2)
    exps = {n: {"enabled": n in ("audio-frozen", "symbolic-features")}
            for n in load_config(PROJECT_ROOT / "experiments" / "demo.yaml", check_models=False).experiments}
    cfg = load_config(PROJECT_ROOT / "experiments" / "demo.yaml",
                      {"data": {"root": str(root), "max_frames": 32, "max_notes": 96, "val_fraction": 0.2},
                       "experiments": exps})
    prepare_data(cfg)  # the symbolic feature cache, as `pianoray run` builds it
    measured = calibrate_throughput(cfg, steps=3, warmup=1, device="cpu")
    assert sorted(measured) == ["audio-frozen", "symbolic-features"]
    for name, m in measured.items():
        assert m.samples_per_s > 0 and m.kind == "cpu" and m.device.startswith("cpu")
        assert m.steps == 3 and 0 < m.samples <= 3 * m.batch_size == 3 * cfg.optim_for(name).batch_size
        assert m.samples_per_s == pytest.approx(m.samples / m.seconds)

    p = plan(cfg, SCRIPTED, eliminated=0.0, sizes=SIZES, calibrated=measured)
    trials = {t.experiment: t for t in p.trials}
    assert {t.throughput_source.split(":")[0] for t in p.trials} == {f"calibrated on {measured['audio-frozen'].device}"}
    # By hand for audio-frozen (a CPU trial): demo.yaml has k=4 (val_fraction pinned to 0.2 above), Round-1 tiers T1+T2,
    # so per epoch 100 x 3/4 x 0.8 + 40 x 3/4 = 90 training and 100 x 3/4 x 0.2 = 15 validation samples,
    # validation at eval_speedup 3x; hours = epochs x (samples / measured samples/s) x CPUs per trial.
    a, sps = trials["audio-frozen"], measured["audio-frozen"].samples_per_s
    assert (cfg.data.k, cfg.data.val_fraction, [t.name for t in cfg.round1.tiers]) == (4, 0.2, ["T1", "T2"])
    assert (a.samples_per_s, a.train_samples, a.eval_samples, a.device) == (sps, 90, 15, "cpu")
    cpus = cfg.resources_for("audio-frozen").cpu
    per_epoch_s = 90 / sps + 15 / (sps * 3.0)
    assert a.epoch_hours == pytest.approx(per_epoch_s / 3600 * cpus)
    r1 = p.rounds[0]
    both = sum(cfg.round1.epochs * (90 / m.samples_per_s + 5 / m.samples_per_s) / 3600 * cfg.resources_for(n).cpu
               for n, m in measured.items())
    assert r1.upper_hours == pytest.approx({"cpu": both})
    # Without calibration the table's number is used.
    table = plan(cfg, sizes=SIZES).trials[0]
    assert not table.throughput_source.startswith("calibrated")


def with_data_parallel(data_parallel: dict) -> ThroughputTable:
    return ThroughputTable.model_validate({**SCRIPTED.model_dump(), "data_parallel": data_parallel})


def test_round2_hours_are_one_worker_hours_over_the_efficiency():
    table = with_data_parallel({"gpu": {"2": {"efficiency": 0.8, "source": "measured: X"}},
                                "cpu": {"2": {"efficiency": 0.5, "source": "assumed: Y"}}})
    one = plan(scripted_config(workers=1), table, eliminated=0.5, sizes=SIZES)
    two = plan(scripted_config(workers=2), table, eliminated=0.5, sizes=SIZES)
    # A fold of 2 workers holds 2x the units for 1 / (2 e) of the time: one worker's hours / e.
    assert two.rounds[1].upper_hours == pytest.approx({"gpu": 11.9 * 80 / 3600 / 0.8, "cpu": 119 * 80 / 3600 / 0.5})
    for which in ("upper_hours", "expected_hours"):
        h1, h2 = getattr(one.rounds[1], which), getattr(two.rounds[1], which)
        assert h2 == pytest.approx({"gpu": h1["gpu"] / 0.8, "cpu": h1["cpu"] / 0.5})
    assert two.rounds[0] == one.rounds[0]  # Round 1: one worker per trial
    assert one.rounds[1].scaling["gpu"].efficiency == 1.0
    notes = "\n".join(two.rounds[1].notes)
    assert "2 workers per fold on GPU: efficiency 0.80" in notes and "(measured: X)" in notes
    assert "2 workers per fold on CPU: efficiency 0.50" in notes and "(assumed: Y)" in notes
    assert not any("workers per fold on" in n for n in one.rounds[1].notes)


def test_scaling_lookup_takes_the_largest_listed_count_not_above_the_request():
    table = with_data_parallel({"gpu": {"2": {"efficiency": 0.9, "source": "measured: two"},
                                        "8": {"efficiency": 0.7, "source": "assumed: eight"}}})
    assert (table.scaling("gpu", 1).efficiency, table.scaling("gpu", 2).source) == (1.0, "measured: two")
    four = table.scaling("gpu", 4)
    assert (four.workers, four.efficiency) == (4, 0.9)
    assert four.source == "measured: two; the entry for 2 workers, the largest listed count <= 4"
    assert (table.scaling("gpu", 8).efficiency, table.scaling("gpu", 16).efficiency) == (0.7, 0.7)
    only8 = with_data_parallel({"gpu": {"8": {"efficiency": 0.7, "source": "assumed: eight"}}})
    assert only8.scaling("gpu", 4).efficiency == 1.0
    assert only8.scaling("gpu", 4).source == ("assumed linear (no measurement for this hardware at <= 4 workers "
                                              "(listed: [8]))")


def test_no_measurement_is_labelled_assumed_linear_in_the_notes_and_the_json():
    p = plan(scripted_config(workers=2), SCRIPTED, sizes=SIZES)
    r2 = p.rounds[1]
    assert {d: (s.workers, s.efficiency) for d, s in r2.scaling.items()} == {"cpu": (2, 1.0), "gpu": (2, 1.0)}
    for dev in ("GPU", "CPU"):
        assert any(n.startswith(f"2 workers per fold on {dev}: efficiency 1.00") and
                   "assumed linear (no measurement for this hardware)" in n for n in r2.notes), r2.notes
    out = json.loads(json.dumps(plan_json(p, {})))
    assert out["rounds"][1]["scaling"]["gpu"] == {
        "workers": 2, "efficiency": 1.0, "source": "assumed linear (no measurement for this hardware)"}
    assert out["rounds"][0]["scaling"] == {}


@pytest.mark.parametrize(("data_parallel", "field"), [
    ({"cpu": {"2": {"efficiency": 0.0, "source": "s"}}}, r"data_parallel\.cpu\.2\.efficiency: .*greater than 0"),
    ({"cpu": {"2": {"efficiency": 1.2, "source": "s"}}}, r"data_parallel\.cpu\.2\.efficiency: .*less than or equal"),
    ({"cpu": {"1": {"efficiency": 0.9, "source": "s"}}}, r"data_parallel\.cpu\.1\.\[key\]: .*greater than or equal"),
    ({"cpu": {"two": {"efficiency": 0.9, "source": "s"}}}, r"data_parallel\.cpu\.two\.\[key\]: .*valid integer"),
    ({"gpu": {"8": {"efficiency": 0.9}}}, r"data_parallel\.gpu\.8\.source: Field required"),
])
def test_bad_data_parallel_tables_name_the_file_and_field(tmp_path, data_parallel, field):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({**SCRIPTED.model_dump(), "data_parallel": data_parallel}))
    with pytest.raises(InputError, match=rf"t\.json: {field}"):
        ThroughputTable.load(bad)


def test_the_8_gpu_config_charges_round2_the_assumed_node_efficiency():
    """protocol-8gpu.yaml is protocol.yaml with 8 workers per fold: Round 1 alike, Round 2 / the table's
    assumed gpu efficiency for 8 workers."""
    one = plan(load_config(PROJECT_ROOT / "experiments" / "protocol.yaml"), sizes=SIZES)
    eight = plan(load_config(PROJECT_ROOT / "experiments" / "protocol-8gpu.yaml"), sizes=SIZES)
    e = ThroughputTable.load().scaling("gpu", 8)
    assert (e.workers, e.source.split(":")[0]) == (8, "assumed")
    assert eight.rounds[0].upper_hours == pytest.approx(one.rounds[0].upper_hours)
    assert eight.rounds[1].upper_hours["gpu"] == pytest.approx(one.rounds[1].upper_hours["gpu"] / e.efficiency)
