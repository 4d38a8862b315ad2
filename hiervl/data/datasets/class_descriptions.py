"""Class descriptions shipped with the built-in datasets (HVLFormer's dataset-aware prompts).

``descriptions/<key>.txt`` (``voc``, ``coco``, ``ade20k``, ``cityscapes``) is written in the
format of a folder dataset's ``classes.txt`` (docs/CUSTOM_DATA.md): line ``k`` (from 1) is
class id ``k - 1``, ``name<TAB>description``. The file is keyed by line order and its length must be the
class count; the name is there to be read and is checked loosely against the registered class
name (see :func:`read_class_descriptions`), so that a shifted file or another dataset's is
caught while a class renamed since the file was written (a cleaner spelling) only warns.

Registration stores the file's path in the dataset metadata (``class_descriptions_file``);
:func:`dataset_class_descriptions` reads it when ``MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS`` is
on. A dataset's own ``class_descriptions`` (a folder's ``classes.txt``, the demo's) are used
either way.
"""

import logging
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Sequence

from .folder import parse_classes

__all__ = [
    "DESCRIPTIONS_DIR",
    "builtin_descriptions_file",
    "dataset_class_descriptions",
    "names_match",
    "read_class_descriptions",
]

logger = logging.getLogger(__name__)

DESCRIPTIONS_DIR = Path(__file__).resolve().parent / "descriptions"


def builtin_descriptions_file(key: str) -> Optional[Path]:
    """The shipped descriptions file of a built-in dataset key (e.g. ``voc``), or None."""
    path = DESCRIPTIONS_DIR / f"{key}.txt"
    return path if path.is_file() else None


def _synonyms(name: str) -> List[str]:
    """Lower-cased, space-normalised comma parts: ``"Rock, stone "`` → ``["rock", "stone"]``."""
    return [" ".join(part.lower().split()) for part in name.split(",") if part.strip()]


def names_match(file_name: str, class_name: str) -> bool:
    """Whether a descriptions file's name can stand for a registered class name.

    True when, ignoring case and spaces, one name contains the other or a comma synonym of the
    other, or the two share a word: ``window`` ↔ ``window ``, ``escalator`` ↔ ``escalator,
    moving staircase, moving stairway``, ``tub`` ↔ ``bathtub``, ``tv`` ↔ ``tv monitor``; not
    ``chair`` ↔ ``sofa``.
    """
    ours, theirs = _synonyms(file_name), _synonyms(class_name)
    words = {w for s in ours for w in re.findall(r"\w+", s)}
    if words & {w for s in theirs for w in re.findall(r"\w+", s)}:
        return True
    compact = [s.replace(" ", "") for s in ours], [s.replace(" ", "") for s in theirs]
    return any(a in b or b in a for a in compact[0] for b in compact[1])


def read_class_descriptions(path: os.PathLike, class_names: Sequence[str]) -> List[List[str]]:
    """Read a descriptions file and check it against the dataset's class list.

    Args:
        path: ``name<TAB>description[<TAB>description...]`` per line, line ``k`` (from 1) =
            class id ``k - 1`` (the ``classes.txt`` format).
        class_names: the registered ``stuff_classes`` (``C`` entries).

    Returns:
        ``C`` lists of description strings, in class order.

    Names are compared loosely (:func:`names_match`). A name that does not match its class is
    logged as a warning naming the line (a class renamed since the file was written); when
    most names do not match (a shifted file, or another dataset's), it is an error.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: naming the file and line: a count other than ``C``, a line without a
            description, a duplicate name, or names that mostly do not match their classes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class descriptions file not found: {path}")
    names, descriptions, problems = parse_classes(path.read_text(encoding="utf-8"), str(path))
    if len(names) != len(class_names):
        problems.append(
            f"{path}: {len(names)} lines for {len(class_names)} classes (one line per class, "
            "in class-id order)"
        )
    mismatches = []
    for line_no, (name, descs, class_name) in enumerate(
        zip(names, descriptions, class_names), start=1
    ):
        if not descs:
            problems.append(f"{path}:{line_no}: no description after the name (name<TAB>text)")
        if name and not names_match(name, class_name):
            mismatches.append(
                f"{path}:{line_no}: {name!r} does not match class {line_no - 1} "
                f"{class_name!r} of the dataset (line i is class id i-1)"
            )
    if 2 * len(mismatches) > len(names):
        problems += mismatches
    else:
        for message in mismatches:
            logger.warning(message)
    if problems:
        raise ValueError("\n".join(problems))
    return descriptions


def dataset_class_descriptions(metadata: Any, *, use_file: bool) -> Optional[List[List[str]]]:
    """The per-class descriptions the model embeds for a dataset.

    Args:
        metadata: the dataset's ``MetadataCatalog`` entry (``stuff_classes``, optional
            ``class_descriptions`` and ``class_descriptions_file``).
        use_file: read ``class_descriptions_file`` (MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS).

    Returns:
        ``C`` lists (the dataset's own descriptions, then the file's), or None when there are
        none.
    """
    own = metadata.get("class_descriptions", None)
    path = metadata.get("class_descriptions_file", None)
    if not use_file:
        return own
    if not path:
        logger.info(
            "Dataset %s ships no class descriptions file: %s",
            metadata.name,
            "using its own descriptions" if own else "class names only",
        )
        return own
    classes = metadata.stuff_classes
    extra = read_class_descriptions(path, classes)
    logger.info("Read descriptions of %d classes from %s", len(extra), path)
    if own is None:
        return extra
    return [list(a) + list(b) for a, b in zip(own, extra)]
