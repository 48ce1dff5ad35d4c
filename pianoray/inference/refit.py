"""``pianoray export --refit``: one model trained on every labelled segment the run's folds hold, instead of the
mean of the fold models.

Early stopping still needs music the model does not train on. The inner validation split is fold 0's (whole
music groups, the split Round 2 selected fold 0's model on); everything else the folds hold (fold 0's training
and test parts) trains. The budget is Round 2's (epochs, patience, tiers), from the encoder's pretrained weights
where it pretrains, as the fold models did; the epoch with the best validation pairwise accuracy is the model.
It runs in this process (no Ray): a CPU run of a demo-size encoder takes seconds to minutes.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from pianoray.errors import InputError
from pianoray.feedback import Feedback, or_default
from pianoray.inference.artifact import Member


def refit(cfg: Any, experiment: str, data: Any, *, feedback: Feedback | None = None) -> Member:
    """The refit member of ``experiment`` (``data``: the run's ``ExperimentData``; see the module docstring)."""
    from pianoray.data.folds import Fold
    from pianoray.data.tiers import Tier
    from pianoray.models import registry
    from pianoray.training.checkpoint import TopKSink, read_state
    from pianoray.training.loop import Budget, fit
    from pianoray.training.runner import ensure_pretrained

    feedback = or_default(feedback)
    kind = registry.get(cfg.encoder_name(experiment)).kind
    if kind != "neural":
        raise InputError(f"--refit: {experiment} is a {kind} model; a fusion starts from its winners' fold models "
                         "and a fitted reference has no epochs: export the fold ensemble")
    first = data.folds.folds[0]
    inner = Fold(train=tuple(sorted({*first.train, *first.test})), val=first.val, test=())
    rounds = ((),) if data.folds.competition_rounds is not None else None  # every competition round trains
    whole = replace(data, folds=replace(data.folds, folds=(inner,), competition_rounds=rounds), _datasets={})
    cfg = ensure_pretrained(cfg, experiment, whole, feedback, folds=[0])
    budget = Budget(cfg.round2.epochs, cfg.round2.patience)
    tiers = [t for t in cfg.round2.tiers if t in data.corpus.tiers] or [Tier.T1]
    feedback.say(f"refitting {experiment} on {len(inner.train)} segments, early stopping on {len(inner.val)} "
                 f"(fold 0's inner validation music), up to {budget.epochs} epochs")
    with tempfile.TemporaryDirectory(prefix="pianoray-refit-") as tmp:
        sink = TopKSink(Path(tmp), k=1)
        for r in fit(cfg, experiment, whole, 0, budget, tiers=tiers, sink=sink):
            pairwise = r.metrics.get("val/pairwise_accuracy", float("nan"))
            feedback.say(f"  epoch {r.epoch}: validation pairwise {pairwise:.3f}"
                         + (" (best)" if r.best_epoch == r.epoch else ""))
        best = sink.best()
        if best is None:
            raise InputError(f"--refit: {experiment} kept no checkpoint (no epoch was scored)")
        state = read_state(best)["model"]
    return Member("refit", state, inner.train)
