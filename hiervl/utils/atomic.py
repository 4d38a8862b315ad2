"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The checkpoints, the ``last_checkpoint`` tag, split files and converted masks are all written
through :func:`atomic_write`: the content goes into a temporary file next to the target
(``<target>.tmp.<pid>``, :data:`TEMPORARY_NAME`), which is flushed to disk and renamed over the
target. A write that fails (an exception, a full disk, Ctrl-C) removes its temporary file and
leaves the target as it was. Processes may write the same target at once (the last rename
wins); threads of one process share a temporary name and must not.
"""

import os
import re
from typing import IO, Callable

__all__ = ["TEMPORARY_NAME", "atomic_write", "atomic_write_text"]

# Temporary files of an atomic write: "<target>.tmp.<pid>" (the pid of the writing process);
# hiervl.engine.output_dir removes those of processes that are gone.
TEMPORARY_NAME = re.compile(r"^.+\.tmp\.(\d+)$")


def atomic_write(path: os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into ``<path>.tmp.<pid>`` (``f`` opened ``"wb"``), then rename it over
    ``path``; the parent folder is created when missing.

    Args:
        path: the target file.
        write: writes the content into the binary file object it is given.
    """
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # any failure, KeyboardInterrupt included: no partial file stays behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """:func:`atomic_write` of ``text`` (newlines written as given)."""
    data = text.encode(encoding)
    atomic_write(path, lambda f: f.write(data))
