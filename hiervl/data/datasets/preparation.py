"""What ``datasets/prepare_*.py`` and ``tools/make_splits.py`` share: they work split by split
and say which split is missing.

A partial download (say ADE20K's validation half only) is prepared as far as it goes: by
default every split whose source is present, with a warning naming each missing one; splits
named with ``--splits`` must all be present, else the error names the missing ones.
"""

import argparse
import logging
from typing import List, Mapping, Optional, Sequence

__all__ = ["add_splits_argument", "select_splits"]

logger = logging.getLogger(__name__)


def add_splits_argument(parser: argparse.ArgumentParser, choices: Sequence[str]) -> None:
    """``--splits`` with ``choices``; default None = every split that is present."""
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=list(choices),
        default=None,
        help=f"splits to work on (default: each of {', '.join(choices)} that is present)",
    )


def select_splits(
    missing: Mapping[str, Optional[str]], requested: Optional[Sequence[str]], *, dataset: str
) -> List[str]:
    """The splits to work on.

    Args:
        missing: every split, in order, mapped to None when it is present, else to what is
            missing (e.g. ``".../annotations/training not found"``).
        requested: the splits asked for (``--splits``); None = every present split, with a
            warning per missing one.
        dataset: named in the messages, e.g. ``"ADE20K"``.

    Returns:
        the splits to work on, in the order of ``missing``.

    Raises:
        FileNotFoundError: a requested split is missing, or no split is present; the message
            names each missing split, what it lacks, and the ``--splits`` that would work.
    """
    present = [split for split, reason in missing.items() if reason is None]
    absent = [split for split, reason in missing.items() if reason is not None]
    wanted = list(missing) if requested is None else [s for s in missing if s in requested]
    lacking = [split for split in wanted if split in absent]
    if lacking and (requested is not None or not present):
        hint = (
            f"; pass --splits {' '.join(present)} to work on the present split(s) only"
            if present
            else ""
        )
        raise FileNotFoundError(
            "\n".join(f"{dataset} split {s!r} is missing: {missing[s]}" for s in lacking) + hint
        )
    for split in lacking:
        logger.warning(
            "%s split %r skipped: %s (a partial download? --splits %s works on the present "
            "ones without this warning)",
            dataset,
            split,
            missing[split],
            " ".join(present),
        )
    return [split for split in wanted if split in present]
