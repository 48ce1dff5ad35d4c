"""The run report: comparison tables (rich / markdown / HTML), PNG figures, and report.md + report.html.

Everything is built from one JSON-able "run results" dict (what ``pianoray report --json`` prints), assembled
by the protocol from the run ledger; see :mod:`pianoray.report.tables` for the fields each table reads.
"""

from pianoray.report.document import write_report
from pianoray.report.plots import plot_all, plot_importance, plot_learning_curves, plot_per_dimension, plot_timeline
from pianoray.report.tables import (
    comparison_markdown,
    comparison_rows,
    comparison_table,
    decision_rows,
    decisions_markdown,
    decisions_table,
)

__all__ = [
    "write_report",
    "plot_all",
    "plot_importance",
    "plot_learning_curves",
    "plot_per_dimension",
    "plot_timeline",
    "comparison_rows",
    "comparison_table",
    "comparison_markdown",
    "decision_rows",
    "decisions_table",
    "decisions_markdown",
]
