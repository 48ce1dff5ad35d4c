"""A fake Tune controller for driving TrackGapScheduler without a cluster (shared by the scheduler and
lifecycle tests).

It does what Ray's TuneController does with a decision: PAUSE -> status PAUSED; STOP -> ``stop_trial`` (which
calls ``on_trial_complete`` for a RUNNING trial, ``on_trial_remove`` for a PAUSED/PENDING one); and it resumes
only what ``choose_trial_to_run`` returns. Trials are any objects with ``trial_id``, ``config`` and ``status``.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from pianoray.protocol.scheduler import TrackGapScheduler
from pianoray.records import SELECTION_METRIC

CONTINUE, PAUSE, STOP = TrialScheduler.CONTINUE, TrialScheduler.PAUSE, TrialScheduler.STOP


class FakeController:
    def __init__(self, scheduler: TrackGapScheduler, trials: list[Any]):
        self.scheduler = scheduler
        self.trials: list[Any] = []
        for t in trials:
            self.add(t)

    def add(self, trial: Any) -> None:
        self.trials.append(trial)
        self.scheduler.on_trial_add(self, trial)

    def get_trials(self):
        return list(self.trials)

    def stop_trial(self, trial: Any) -> None:
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.scheduler.on_trial_remove(self, trial)
        else:
            self.scheduler.on_trial_complete(self, trial, {})
        trial.status = Trial.TERMINATED

    def report(self, trial: Any, epoch: int, metric: float, **extra) -> str:
        assert trial.status in (Trial.PENDING, Trial.RUNNING), f"{trial} reported while {trial.status}"
        trial.status = Trial.RUNNING
        action = self.scheduler.on_trial_result(self, trial, {"epoch": epoch, SELECTION_METRIC: metric, **extra})
        if action == PAUSE:
            trial.status = Trial.PAUSED
        elif action == STOP:
            self.stop_trial(trial)
        return action

    def complete(self, trial: Any) -> None:
        self.scheduler.on_trial_complete(self, trial, {})
        trial.status = Trial.TERMINATED

    def error(self, trial: Any, retry: bool = False) -> None:
        """Tune: a retry stops the trial as ERROR, tells the scheduler, then re-adds it PENDING; a final error
        tells the scheduler while the trial is still RUNNING (only a running trial errors)."""
        trial.retries_left = retry
        if retry:
            trial.status = Trial.ERROR
            self.scheduler.on_trial_error(self, trial)
            trial.status = Trial.PENDING
            self.scheduler.on_trial_add(self, trial)
        else:
            trial.status = Trial.RUNNING
            self.scheduler.on_trial_error(self, trial)
            trial.status = Trial.ERROR

    def resumable(self) -> set[str]:
        """Every trial choose_trial_to_run would hand back, taking each one in turn (as Tune does)."""
        out = set()
        while (t := self.scheduler.choose_trial_to_run(self)) is not None and t.config["experiment"] not in out:
            out.add(t.config["experiment"])
            t.status = Trial.RUNNING  # started: choose_trial_to_run moves on to the next one
        return out
