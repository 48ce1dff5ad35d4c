"""Resource-hours: what each trial and each experiment cost, for the comparison table's GPU-hours column.

A run that holds GPUs is billed in GPU-hours (GPUs x wall hours), since GPUs are the scarce resource and
its CPUs come with them; a run without GPUs is billed in CPU-hours (CPUs x wall hours), so the laptop demo
still reports a cost. Resource dicts use Ray's keys, either case: ``{"cpu": 4, "gpu": 1}`` or
``{"CPU": 4, "GPU": 1}``; other keys (memory, custom resources) are not billed.

>>> resource_hours({"cpu": 8, "gpu": 2}, 5400).gpu_hours
3.0
>>> resource_hours({"cpu": 4}, 1800).cpu_hours
2.0
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping


@dataclass(frozen=True)
class ResourceHours:
    """Billed hours; exactly one field is non-zero for one run (both may be, once summed)."""

    gpu_hours: float = 0.0
    cpu_hours: float = 0.0

    def __add__(self, other: "ResourceHours") -> "ResourceHours":
        return ResourceHours(self.gpu_hours + other.gpu_hours, self.cpu_hours + other.cpu_hours)

    @property
    def resource(self) -> str:
        """"gpu" when any GPU time was billed, else "cpu"."""
        return "gpu" if self.gpu_hours > 0 else "cpu"

    @property
    def amount_hours(self) -> float:
        return self.gpu_hours if self.resource == "gpu" else self.cpu_hours

    def to_dict(self) -> dict[str, float]:
        return {"gpu_hours": self.gpu_hours, "cpu_hours": self.cpu_hours}


def _amount(resources: Mapping[str, Any], key: str) -> float:
    total = 0.0
    for k, v in resources.items():
        if k.lower() == key:
            total += float(v)
    if total < 0:
        raise ValueError(f"resources[{key!r}] must be >= 0, got {total}")
    return total


def resource_hours(resources: Mapping[str, Any], wall_seconds: float) -> ResourceHours:
    """Bill ``resources`` held for ``wall_seconds``: GPU-hours when it used GPUs, CPU-hours otherwise."""
    if wall_seconds < 0:
        raise ValueError(f"wall_seconds must be >= 0, got {wall_seconds}")
    hours = wall_seconds / 3600.0
    gpu = _amount(resources, "gpu")
    if gpu > 0:
        return ResourceHours(gpu_hours=gpu * hours)
    return ResourceHours(cpu_hours=_amount(resources, "cpu") * hours)


def scale_resources(per_worker: Mapping[str, Any], workers: int) -> dict[str, float]:
    """Total resources of ``workers`` identical Ray Train workers (e.g. one fold's TorchTrainer)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return {k: float(v) * workers for k, v in per_worker.items()}


class ResourceClock:
    """Wall clock for one trial/fold holding ``resources``.

    >>> t = iter([100.0, 1900.0])
    >>> clock = ResourceClock({"gpu": 2}, now=lambda: next(t))
    >>> clock.start(); clock.stop().gpu_hours
    1.0

    Also a context manager; :attr:`hours` holds the result after stop. ``now`` is injectable for tests.
    """

    def __init__(self, resources: Mapping[str, Any], now: Callable[[], float] = time.monotonic) -> None:
        resource_hours(resources, 0.0)  # validate up front, not at stop time
        self.resources = dict(resources)
        self._now = now
        self._started: float | None = None
        self.wall_seconds: float | None = None
        self.hours: ResourceHours | None = None

    def start(self) -> None:
        if self._started is not None:
            raise RuntimeError("ResourceClock.start called twice without stop")
        self._started = self._now()

    def stop(self) -> ResourceHours:
        if self._started is None:
            raise RuntimeError("ResourceClock.stop called before start")
        self.wall_seconds = self._now() - self._started
        self._started = None
        self.hours = resource_hours(self.resources, self.wall_seconds)
        return self.hours

    def __enter__(self) -> "ResourceClock":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass(frozen=True)
class ResourceRecord:
    """One billed run (a trial, or one fold of a Round-2 job) as stored in the ledger."""

    experiment: str
    trial: str
    resource: str  # "gpu" | "cpu"
    amount_hours: float
    wall_seconds: float
    round: str | None = None
    fold: int | None = None

    def __post_init__(self) -> None:
        if self.resource not in ("gpu", "cpu"):
            raise ValueError(f"ResourceRecord({self.experiment}/{self.trial}): resource must be gpu|cpu")
        if self.amount_hours < 0 or self.wall_seconds < 0:
            raise ValueError(f"ResourceRecord({self.experiment}/{self.trial}): hours and seconds must be >= 0")

    @property
    def hours(self) -> ResourceHours:
        if self.resource == "gpu":
            return ResourceHours(gpu_hours=self.amount_hours)
        return ResourceHours(cpu_hours=self.amount_hours)


def hours_by_experiment(records: Iterable[ResourceRecord]) -> dict[str, ResourceHours]:
    """Sum over trials and folds per experiment (every round it ran in)."""
    out: dict[str, ResourceHours] = {}
    for r in records:
        out[r.experiment] = out.get(r.experiment, ResourceHours()) + r.hours
    return out


def hours_by_round(records: Iterable[ResourceRecord]) -> dict[tuple[str | None, str], ResourceHours]:
    """Sum per (round, experiment), e.g. Round-1 screening cost apart from the Round-2 CV cost."""
    out: dict[tuple[str | None, str], ResourceHours] = {}
    for r in records:
        key = (r.round, r.experiment)
        out[key] = out.get(key, ResourceHours()) + r.hours
    return out
