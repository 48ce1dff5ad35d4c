"""Files the user names or the project writes: whole or not at all, and one clear error naming the path.

:func:`atomic_write` is the one way a file is written (tmp sibling + ``os.replace``), and it cleans up after
itself when the write fails (a full disk, a folder in the way); :func:`read_text` reads a file the user named,
naming it when it is missing, a folder, unreadable or not text (:func:`read_json`: or not JSON). A folder written whole (a checkpoint, a
pretraining result, a cache entry) uses its own tmp folder + rename: see where each is written.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from pianoray.errors import InputError, MissingInputError


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``path`` whole or not at all; a reader never sees half a file.

    ``data``: the bytes or text (UTF-8), or a function that writes the file at the path it is given (numpy,
    torch, matplotlib writers); that temporary path keeps ``path``'s suffix, which such writers go by. The
    parent folder is created. On any failure the temporary file is removed and the error propagates (a
    kill -9 mid-write can leave a hidden ``.<name>.<hex>.tmp<suffix>``, never a truncated ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of a file the user named (``what`` says which, for the message), or one error naming it:
    missing (:class:`MissingInputError`), a folder, unreadable, or not text (:class:`InputError`; a binary file
    given where a YAML goes would otherwise fail deep inside a decoder, naming nothing)."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingInputError(f"{p}: no such {what}") from None
    except IsADirectoryError:
        raise InputError(f"{p}: a folder, not a {what}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not a text {what} (byte {e.start} is not UTF-8)") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read the {what}: {e.strerror or e}") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The parsed JSON of a file, or one error naming it (:func:`read_text`'s, or :class:`InputError` for text
    that is not JSON, with the line and column)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
