"""How library code speaks to a person without knowing the terminal.

Library functions (data preparation, extraction, pretraining, the protocol driver) take a ``Feedback``;
``None`` means this base class, which logs through :mod:`logging` (``pianoray.*`` loggers: silent unless
the caller configures logging, warnings to stderr). The edge passes a subclass that draws: the CLI's
:class:`pianoray.terminal.RichFeedback`. Four things cross this seam: a line, a warning, the progress of a
counted task, and a live view that is redrawn as a run advances.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

log = logging.getLogger("pianoray")

Advance = Callable[..., None]
"""``advance(n=1, note="")``: ``n`` more of a counted task done; ``note`` says which (a file name)."""


class Feedback:
    """Log-only feedback; subclass at the edge to draw. Every method is safe to call from library code."""

    def say(self, line: str) -> None:
        log.info(line)

    def warn(self, line: str) -> None:
        log.warning(line)

    @contextlib.contextmanager
    def progress(self, task: str, total: int) -> Iterator[Advance]:
        """Yields ``advance``; the edge shows a bar, this base class logs the task once it ends."""
        done = [0]

        def advance(n: int = 1, note: str = "") -> None:
            done[0] += n

        yield advance
        log.info("%s: %d/%d", task, done[0], total)

    @contextlib.contextmanager
    def live(self, render: Callable[[], Any]) -> Iterator[Callable[[], None]]:
        """Yields ``refresh``: redraw ``render()`` (a renderable the edge understands) now. No-op here."""
        yield lambda: None


def or_default(feedback: Feedback | None) -> Feedback:
    """``feedback``, or the logging default when the caller passed none."""
    return feedback if feedback is not None else Feedback()
