import pytest

from pianoray.protocol.accounting import (
    ResourceClock,
    ResourceHours,
    ResourceRecord,
    hours_by_experiment,
    hours_by_round,
    resource_hours,
    scale_resources,
)


def test_gpu_run_is_billed_in_gpu_hours_only():
    h = resource_hours({"cpu": 8, "gpu": 2}, 5400)  # 2 GPUs x 1.5 h
    assert h == ResourceHours(gpu_hours=3.0, cpu_hours=0.0)
    assert (h.resource, h.amount_hours) == ("gpu", 3.0)


def test_cpu_run_is_billed_in_cpu_hours_and_ray_upper_case_keys_work():
    h = resource_hours({"CPU": 4, "GPU": 0, "memory": 10**9}, 900)  # 4 CPUs x 0.25 h
    assert h == ResourceHours(gpu_hours=0.0, cpu_hours=1.0)
    assert (h.resource, h.amount_hours) == ("cpu", 1.0)


def test_fractional_resources_and_zero_time():
    assert resource_hours({"cpu": 0.1}, 36) == ResourceHours(cpu_hours=pytest.approx(0.001))
    assert resource_hours({"gpu": 0.5}, 0) == ResourceHours()


@pytest.mark.parametrize("resources,wall", [({"cpu": -1}, 10), ({"cpu": 1}, -1)])
def test_negative_inputs_are_errors(resources, wall):
    with pytest.raises(ValueError):
        resource_hours(resources, wall)


def test_scale_resources_for_train_workers():
    assert scale_resources({"cpu": 2, "gpu": 1}, 4) == {"cpu": 8.0, "gpu": 4.0}
    with pytest.raises(ValueError):
        scale_resources({"cpu": 1}, 0)


def test_resource_clock_with_scripted_time():
    ticks = iter([10.0, 10.0 + 7200.0, 50.0, 50.0 + 1800.0])
    clock = ResourceClock({"gpu": 1, "cpu": 4}, now=lambda: next(ticks))
    clock.start()
    assert clock.stop() == ResourceHours(gpu_hours=2.0)
    assert clock.wall_seconds == 7200.0
    with ResourceClock({"cpu": 2}, now=lambda: next(ticks)) as c:
        pass
    assert c.hours == ResourceHours(cpu_hours=1.0)


def test_resource_clock_misuse():
    clock = ResourceClock({"cpu": 1})
    with pytest.raises(RuntimeError):
        clock.stop()
    clock.start()
    with pytest.raises(RuntimeError):
        clock.start()
    with pytest.raises(ValueError):
        ResourceClock({"gpu": -1})


def test_aggregation_over_trials_folds_and_rounds():
    recs = [
        ResourceRecord("A1", "t1", "gpu", 0.5, 1800, round="round1"),
        ResourceRecord("A1", "cv", "gpu", 1.25, 4500, round="round2", fold=0),
        ResourceRecord("A1", "cv", "gpu", 1.25, 4500, round="round2", fold=1),
        ResourceRecord("S1", "t2", "cpu", 2.0, 3600, round="round1"),
    ]
    per_exp = hours_by_experiment(recs)
    assert per_exp["A1"] == ResourceHours(gpu_hours=3.0)
    assert per_exp["S1"] == ResourceHours(cpu_hours=2.0)
    per_round = hours_by_round(recs)
    assert per_round[("round2", "A1")] == ResourceHours(gpu_hours=2.5)
    assert per_round[("round1", "A1")] == ResourceHours(gpu_hours=0.5)


def test_record_validation():
    with pytest.raises(ValueError, match="A1/t1"):
        ResourceRecord("A1", "t1", "tpu", 1.0, 1.0)
    with pytest.raises(ValueError):
        ResourceRecord("A1", "t1", "cpu", -1.0, 1.0)
