"""``OUTPUT_DIR`` of a training run: one run at a time, no run overwritten unasked.

The folder is claimed by one training run at a time (an ``flock`` the OS releases when the
process dies), temporary files of saves interrupted in dead processes are removed, and a new
run does not train over another run's checkpoints unless asked
(``SOLVER.OVERWRITE_OUTPUT_DIR``).
"""

import errno
import logging
import os
import re
from typing import IO, Dict, List

from hiervl.utils.checkpoint import TEMPORARY_NAME

try:
    import fcntl
except ImportError:  # not POSIX: OUTPUT_DIR is not locked
    fcntl = None

__all__ = [
    "LOCK_FILE",
    "OutputDirError",
    "claim_output_dir",
    "lock_output_dir",
    "release_output_dir",
    "remove_stale_temporary_files",
]

logger = logging.getLogger(__name__)

# The lock file of a training run in OUTPUT_DIR (holds "pid host" of the run holding it).
LOCK_FILE = ".train.lock"
# Files a training run writes that a new run must not silently replace.
_CHECKPOINT_NAME = re.compile(r"^(model_.*\.pth|last_checkpoint)$")
# OUTPUT_DIRs whose lock this process holds: real path -> open lock file.
_HELD_LOCKS: Dict[str, IO] = {}


class OutputDirError(RuntimeError):
    """OUTPUT_DIR is in use by another run, or holds a run that this one would overwrite."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporary_files(folder: str) -> List[str]:
    """Remove the ``*.tmp.<pid>`` files of interrupted saves (SIGKILL, power loss) in
    ``folder`` whose process is no longer alive; those of live processes are kept.

    Returns:
        the names removed.
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        m = TEMPORARY_NAME.match(name)
        path = os.path.join(folder, name)
        if not m or not os.path.isfile(path) or _pid_alive(int(m.group(1))):
            continue
        size = os.path.getsize(path)
        os.remove(path)
        removed.append(name)
        logger.warning(
            "Removed %s (%.1f MB), the temporary file of a save interrupted in process %s",
            path,
            size / 2**20,
            m.group(1),
        )
    return removed


def lock_output_dir(output_dir: str) -> None:
    """Take this process's exclusive lock on ``output_dir`` (``flock`` of ``LOCK_FILE``, held
    until :func:`release_output_dir` or the process ends, however it ends). A second call in
    the same process does nothing.

    Raises:
        OutputDirError: another live process holds it.
    """
    path = os.path.realpath(output_dir)
    if path in _HELD_LOCKS or fcntl is None:
        return
    os.makedirs(path, exist_ok=True)
    lock_path = os.path.join(path, LOCK_FILE)
    f = open(lock_path, "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            logger.warning(
                "Cannot lock %s (%s): a second run into it at the same time is not detected",
                lock_path,
                e.strerror,
            )
            return
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        raise OutputDirError(
            f"Another run is training into {output_dir} (process and host: {holder}; lock file "
            f"{lock_path}). Wait for it to end or stop it, or give this run another OUTPUT_DIR."
        ) from e
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()} {os.uname().nodename}\n")
    f.flush()
    _HELD_LOCKS[path] = f


def release_output_dir(output_dir: str) -> None:
    """Release this process's lock on ``output_dir`` (if it holds one)."""
    f = _HELD_LOCKS.pop(os.path.realpath(output_dir), None)
    if f is not None:
        f.close()


def claim_output_dir(
    output_dir: str, *, resume: bool, overwrite: bool = False, main_process: bool = True
) -> None:
    """Make ``output_dir`` this training run's, before anything is written into it.

    The main process takes the folder's lock (:func:`lock_output_dir`) and removes the
    temporary files of dead runs' interrupted saves. A run that does not resume (``resume``
    False, or no ``last_checkpoint`` to resume from) is refused when the folder holds another
    run's checkpoints, unless ``overwrite``: then ``last_checkpoint`` is removed (a later
    ``--resume`` cannot pick the old run's checkpoint) and ``metrics.json`` emptied, and the
    old ``model_*.pth`` files are replaced as this run saves under the same names.

    Args:
        output_dir: ``OUTPUT_DIR``.
        resume: the run resumes from ``last_checkpoint`` when there is one (``--resume``).
        overwrite: ``SOLVER.OVERWRITE_OUTPUT_DIR``.
        main_process: lock, clean and overwrite here (the other ranks only check).

    Raises:
        OutputDirError: another run holds the folder, or the folder holds another run.
    """
    if main_process:
        lock_output_dir(output_dir)
        remove_stale_temporary_files(output_dir)
    last = os.path.join(output_dir, "last_checkpoint")
    if resume and os.path.isfile(last):
        return
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    found = sorted((n for n in names if _CHECKPOINT_NAME.match(n)), reverse=True)
    if not found:
        return
    if not overwrite:
        if resume:
            how = "There is no last_checkpoint to resume from. Give this run"
        else:
            how = (
                "Continue that run with --resume (a finished run is then evaluated, not "
                "trained again), or give this run"
            )
        listed = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise OutputDirError(
            f"{output_dir} already holds the checkpoints of a run ({listed}): this run would "
            f"overwrite them. {how} another OUTPUT_DIR, or set SOLVER.OVERWRITE_OUTPUT_DIR "
            "True to train over them."
        )
    if main_process:
        logger.warning(
            "SOLVER.OVERWRITE_OUTPUT_DIR: training over the run in %s (%s); last_checkpoint "
            "and metrics.json start afresh, its model_*.pth are replaced as this run saves",
            output_dir,
            ", ".join(found),
        )
        if os.path.isfile(last):
            os.remove(last)
        metrics = os.path.join(output_dir, "metrics.json")
        if os.path.isfile(metrics):
            # truncated, not removed: a JSONWriter may already hold it open for appending
            open(metrics, "w").close()
