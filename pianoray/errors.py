"""The project's error types: what a user can fix, reported by the CLI as one line naming the file, key or field.

Every problem with the user's input or environment raises a :class:`PianorayError` subclass where it is found
(``ConfigError``, ``FoldError``, ``MidiError``...), with a message that names the file, key or field. The CLI's
``user_errors`` turns exactly these into one line and exit code 2; any other exception is a bug and shows its
traceback. Each subclass also derives from the builtin it refines (``ValueError``, ``KeyError``, ``OSError``),
so code catching the builtin keeps working.
"""

from __future__ import annotations


class PianorayError(Exception):
    """A problem the user can fix; its message says what and where."""


class UnknownNameError(PianorayError, KeyError):
    """A name that is not registered or not configured (an experiment, a track, a view, a tier...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MissingInputError(PianorayError, FileNotFoundError):
    """A file or folder the user pointed at (or a step had to build first) is not there."""


class InputError(PianorayError, ValueError):
    """A value the user gave (an option, a config field, a data file's content) that cannot be used."""

