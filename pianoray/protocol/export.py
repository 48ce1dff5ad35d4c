"""``pianoray export``: a finished run's chosen model as an artifact (``pianoray.inference.artifact``).

Which model: the run's final model (Round 3's verdict: a fusion only if it beat the best single encoder with a CI
above zero, else that encoder); ``track`` asks for a track's winner instead, ``experiment`` for any experiment the
run kept fold models of. The artifact is the mean ensemble of that experiment's fold models, read from the run's
``best/<experiment>/fold<k>/`` (``trials.BestStore``), or with ``refit`` one model trained on every segment the
folds hold (``pianoray.inference.refit``), with:

- the settings they were trained with: the run's own config (``config.json``) with Round 1's searched
  configurations and Round 2's promotions put back, and for a fusion the winners it fused (:func:`trained_config`);
- the fitted hand-crafted reference of the model's tracks (``symbolic-gbm``), fitted once per fold on that fold's
  training part, as in Round 2, and averaged like the members;
- the fingerprints of every segment the folds hold (train, validation and test of every fold: each member trained
  on some and selected on others), so that ``evaluate`` can tell music they saw from music they did not. The
  music groups of ``data.holdout_groups`` are in no fold, so they come out unseen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pianoray.config import ProtocolConfig
from pianoray.errors import InputError, UnknownNameError
from pianoray.feedback import Feedback, or_default
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.storage import RunStorage
from pianoray.records import ROUND1, ROUND3


class ExportError(InputError):
    """The run cannot give the model asked for (not finished, no such experiment, no kept fold models)."""


def trained_config(storage: RunStorage, ledger: Ledger) -> ProtocolConfig:
    """The config the run's models were trained with: its ``config.json``, with each searched experiment's
    configurations (the ledger's ``search`` events) and Round 1's promotions in place, and Round 3's fusions
    over the winners they fused."""
    from pianoray.protocol.run import round2_config
    from pianoray.protocol.search import Candidate, with_candidates
    from pianoray.training.fusion import fusion_experiment

    cfg = ProtocolConfig.model_validate(storage.read_json("config.json"))
    candidates = [Candidate.from_json(c) for e in ledger.events("search") for c in e.payload.get("configs", [])]
    if candidates:
        cfg = with_candidates(cfg, candidates)
    cfg = round2_config(cfg, ledger.round_summary(ROUND1) or {})
    r3 = ledger.round_summary(ROUND3) or {}
    fused = {f: fusion_experiment(cfg, f, r3["fuses"]) for f in r3.get("experiments", [])}
    return cfg.model_copy(update={"experiments": {**cfg.experiments, **fused}}) if fused else cfg


def choose(results: dict[str, Any], *, track: str | None = None, experiment: str | None = None) -> tuple[str, str]:
    """(experiment to export, why) from the run's public results (``RunView.results()``)."""
    winners = {t: w for t, w in (results.get("winners") or {}).items() if w}
    final = (results.get("fusion") or {}).get("final") or {}
    if experiment is not None:
        return experiment, "asked for with --experiment"
    if track is not None:
        if track == "fusion" and (results.get("fusion") or {}).get("winner"):
            return results["fusion"]["winner"], "the fusion track's winner (asked for with --track)"
        if track not in winners:
            raise ExportError(f"--track {track}: the run has no {track} winner (winners: "
                              f"{', '.join(f'{t}={w}' for t, w in winners.items()) or 'none'})")
        return winners[track], f"the {track} track's winner (asked for with --track)"
    if final.get("model"):
        return final["model"], f"the run's final model: {final.get('reason') or final.get('kind')}"
    if len(winners) == 1:
        (t, w), = winners.items()
        return w, f"the {t} track's winner, the run's only one"
    if not winners:
        raise ExportError("the run selected no winner: nothing to export")
    raise ExportError(f"the run has a winner per track and no final model (Round 3 off): give --track "
                      f"({', '.join(winners)}) or --experiment")


def export_run(storage: RunStorage, out: Path, *, track: str | None = None, experiment: str | None = None,
               refit: bool = False, feedback: Feedback | None = None) -> Any:
    """Write the artifact of the run at ``storage`` to ``out``; returns its manifest. ``refit``: one model
    trained on every segment the folds hold (``pianoray.inference.refit``) instead of the fold models' mean."""
    from pianoray.inference.artifact import artifact_parts, fold_members, provenance, write_artifact
    from pianoray.protocol.trials import BestStore
    from pianoray.protocol.view import RunView
    from pianoray.training.data import ExperimentData

    feedback = or_default(feedback)
    if not storage.exists("run.json"):
        raise ExportError(f"{storage.uri}: no pianoray run here (no run.json)")
    ledger = Ledger(storage)
    results = RunView.read(ledger, storage).results()
    if results["run"]["status"] != "finished":
        raise ExportError(f"{storage.uri}: the run has not finished selection; resume it with `pianoray run`")
    name, why = choose(results, track=track, experiment=experiment)
    store = BestStore(storage.storage_uri, storage.name)
    folds = store.folds(name)
    if not folds:
        kept = sorted({rel.split("/")[1] for rel in storage.list(BestStore.DIR) if rel.count("/") >= 2})
        raise ExportError(f"{storage.uri}: no fold models of {name!r} are kept (kept: {', '.join(kept) or 'none'})")
    cfg = trained_config(storage, ledger)
    if name not in cfg.experiments:
        raise UnknownNameError(f"{storage.uri}: {name!r} is not an experiment of this run")
    data = ExperimentData.from_config(cfg)
    feedback.say(f"exporting {name} ({why}): " + ("refit on every segment of the folds" if refit else
                                                  f"the mean of {len(folds)} fold models"))
    if refit:
        from pianoray.inference.refit import refit as refit_member

        members, kind = [refit_member(cfg, name, data, feedback=feedback)], "refit"
    else:
        members, kind = fold_members(data, {k: store.weights(name, k) for k in folds}), "fold-ensemble"
    parts = artifact_parts(cfg, name, data, members, kind=kind, feedback=feedback,
                           provenance=provenance(storage.uri, name, why, cfg.data.holdout_groups))
    write_artifact(out, parts)
    return parts.manifest

