"""The class list of a folder dataset: ``classes.txt`` (names, descriptions, ``ignore:`` ids)."""

import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = [
    "IGNORE_LABEL",
    "TEXT_ENCODING",
    "FolderDatasetError",
    "parse_classes",
    "parse_ignore_ids",
    "read_classes",
    "read_ignore_ids",
]

IGNORE_LABEL = 255
# Encoding of the text files a user writes (classes.txt, palette): UTF-8, where a leading
# byte-order mark (written by some Windows editors) is dropped, not read into the first name.
TEXT_ENCODING = "utf-8-sig"


class FolderDatasetError(ValueError):
    """A folder dataset cannot be registered or read; the message names the file at fault."""


def parse_classes(
    text: str, source: str = "classes.txt"
) -> Tuple[List[str], List[List[str]], List[str]]:
    """Parse a ``classes.txt``.

    Args:
        text: file content; line ``i`` (1-based) is class id ``i - 1``: ``name`` or
            ``name<TAB>description[<TAB>description...]``. Trailing blank lines are allowed, and
            so are ``ignore: <ids>`` lines after the class names (read by
            :func:`parse_ignore_ids`; they are no class).
        source: file name used in the problem messages.

    Returns:
        ``(names, descriptions, problems)``: descriptions per class (empty when a line has
        none: the model always embeds the name itself, descriptions are extra variants);
        problems are messages (empty class list, blank line inside the list, duplicate names,
        a class line after an ``ignore:`` line), empty when the file is valid.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names: List[str] = []
    descriptions: List[List[str]] = []
    problems: List[str] = []
    first_line: Dict[str, int] = {}
    ignore_line = 0
    for line_no, line in enumerate(lines, start=1):
        if _IGNORE_LINE.match(line):
            ignore_line = ignore_line or line_no
            continue
        if ignore_line:
            problems.append(
                f"{source}:{line_no}: class line after the 'ignore:' line {ignore_line} (line i "
                f"is class id i-1: put 'ignore:' after the last class)"
            )
        fields = [f.strip() for f in line.split("\t")]
        name = fields[0]
        if not name:
            problems.append(f"{source}:{line_no}: empty class name (line i is class id i-1)")
        elif name in first_line:
            problems.append(
                f"{source}:{line_no}: duplicate class name {name!r} (first on line "
                f"{first_line[name]})"
            )
        else:
            first_line[name] = line_no
        names.append(name)
        descriptions.append([d for d in fields[1:] if d])
    if not names:
        problems.append(f"{source}: no class names (one name per line)")
    return names, descriptions, problems


# ``ignore: 11`` or ``ignore: 11, 12`` (case-insensitive); a class may still be called "ignore".
_IGNORE_LINE = re.compile(r"^\s*ignore\s*:(?P<ids>.*)$", re.I)


def parse_ignore_ids(
    text: str, num_classes: Optional[int] = None, source: str = "classes.txt"
) -> Tuple[List[int], List[str]]:
    """The mask ids a ``classes.txt`` declares as "ignore" (besides 255, always ignored).

    Args:
        text: file content; every line ``ignore: <id>[, <id>...]`` (ids 0-255, separated by
            spaces or commas) declares ids that masks use for pixels to leave out, e.g.
            CamVid's void ``ignore: 11``. They are read as 255 when masks are loaded.
        num_classes: ``C``; when given, a declared id must not be a class id ``0..C-1``.
        source: file name used in the problem messages.

    Returns:
        ``(sorted ids, problems)``.
    """
    ids = set()
    problems: List[str] = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        match = _IGNORE_LINE.match(line)
        if match is None:
            continue
        tokens = match["ids"].replace(",", " ").split()
        if not tokens or not all(t.isdigit() and int(t) <= 255 for t in tokens):
            problems.append(
                f"{source}:{line_no}: expected 'ignore: <id>' with mask ids 0-255, got "
                f"{line.strip()!r}"
            )
            continue
        for value in map(int, tokens):
            if num_classes is not None and value < num_classes:
                problems.append(
                    f"{source}:{line_no}: ignore id {value} is class id {value} (classes are "
                    f"0..{num_classes - 1}); an ignore id must be no class"
                )
            ids.add(value)
    return sorted(ids), problems


def read_classes(path: os.PathLike) -> Tuple[List[str], List[List[str]]]:
    """Read a ``classes.txt`` (see :func:`parse_classes`); raise on any problem.

    Returns:
        ``(names, descriptions)``, ``C`` entries each.
    """
    path = Path(path)
    if not path.is_file():
        raise FolderDatasetError(f"Class list not found: {path} (one class name per line)")
    names, descriptions, problems = parse_classes(path.read_text(encoding=TEXT_ENCODING), str(path))
    if problems:
        raise FolderDatasetError("\n".join(problems))
    return names, descriptions


def read_ignore_ids(path: os.PathLike, num_classes: int) -> List[int]:
    """The ``ignore:`` ids of a ``classes.txt`` (see :func:`parse_ignore_ids`); raise on any
    problem."""
    path = Path(path)
    ids, problems = parse_ignore_ids(path.read_text(encoding=TEXT_ENCODING), num_classes, str(path))
    if problems:
        raise FolderDatasetError("\n".join(problems))
    return ids
