"""Colours of a folder dataset: the palette file of colour masks, or distinct colours."""

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..palette import bit_palette
from .classes import IGNORE_LABEL, TEXT_ENCODING, FolderDatasetError

__all__ = [
    "Palette",
    "distinct_colors",
    "parse_palette",
    "read_palette",
    "resolve_palette_path",
]

RGB = Tuple[int, int, int]


@dataclass
class Palette:
    """Colours of a colour-mask palette file.

    Attributes:
        class_colors: one RGB triple per class, index = class id.
        ignore_colors: RGB triples mapped to the ignore label.
    """

    class_colors: List[RGB]
    ignore_colors: List[RGB] = field(default_factory=list)

    def lookup(self) -> Dict[int, int]:
        """``{r << 16 | g << 8 | b: id}`` for every class and ignore colour."""
        table = {_pack(c): IGNORE_LABEL for c in self.ignore_colors}
        table.update({_pack(c): i for i, c in enumerate(self.class_colors)})
        return table

    def digest(self) -> str:
        """Short hash of the colours (keys the cache of converted masks)."""
        text = repr((self.class_colors, self.ignore_colors)).encode()
        return hashlib.sha1(text).hexdigest()[:10]


def _pack(rgb: Sequence[int]) -> int:
    return (int(rgb[0]) << 16) | (int(rgb[1]) << 8) | int(rgb[2])


def unpack_color(key: int) -> RGB:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


def _parse_color(token_list: List[str]) -> Optional[RGB]:
    if len(token_list) == 1 and _HEX.match(token_list[0]):
        value = int(token_list[0][1:], 16)
        return unpack_color(value)
    if len(token_list) == 3 and all(t.isdigit() and int(t) <= 255 for t in token_list):
        r, g, b = (int(t) for t in token_list)
        return r, g, b
    return None


def parse_palette(
    text: str, num_classes: Optional[int] = None, source: str = "palette"
) -> Tuple[Optional[Palette], List[str]]:
    """Parse a palette file.

    Args:
        text: one colour per line, ``R G B`` (0-255, spaces or commas) or ``#rrggbb``, in
            class-id order; a line whose last word is ``ignore`` maps its colour to 255.
            Blank lines are skipped.
        num_classes: ``C``; when given, the number of class colours must match.
        source: file name used in the problem messages.

    Returns:
        ``(palette or None, problems)``.
    """
    class_colors: List[RGB] = []
    ignore_colors: List[RGB] = []
    problems: List[str] = []
    seen: Dict[RGB, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        tokens = line.replace(",", " ").split()
        if not tokens:
            continue
        is_ignore = tokens[-1].lower() == "ignore"
        color = _parse_color(tokens[:-1] if is_ignore else tokens)
        if color is None:
            problems.append(
                f"{source}:{line_no}: expected 'R G B' (0-255) or '#rrggbb', got {line.strip()!r}"
            )
            continue
        if color in seen:
            problems.append(
                f"{source}:{line_no}: colour {color} already used on line {seen[color]}"
            )
        seen[color] = line_no
        (ignore_colors if is_ignore else class_colors).append(color)
    if not class_colors and not problems:
        problems.append(f"{source}: no colours")
    if num_classes is not None and class_colors and len(class_colors) != num_classes:
        problems.append(
            f"{source}: {len(class_colors)} class colours for {num_classes} classes in "
            f"classes.txt (one colour per class, in class-id order)"
        )
    if problems:
        return None, problems
    return Palette(class_colors, ignore_colors), problems


def read_palette(path: os.PathLike, num_classes: Optional[int] = None) -> Palette:
    """Read a palette file (see :func:`parse_palette`); raise on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FolderDatasetError(f"Palette file not found: {path}")
    palette, problems = parse_palette(
        path.read_text(encoding=TEXT_ENCODING), num_classes, str(path)
    )
    if palette is None:
        raise FolderDatasetError("\n".join(problems))
    return palette


def distinct_colors(num: int) -> List[RGB]:
    """``num`` distinct RGB colours, the same for every call (PASCAL VOC's bit-spread map,
    :func:`~hiervl.data.datasets.palette.bit_palette`).

    Args:
        num: number of colours, at most 255 (id 255 is the ignore label).
    """
    return bit_palette(num)


def resolve_palette_path(root: os.PathLike, palette: os.PathLike) -> Optional[Path]:
    """The palette file: ``palette`` as given when it exists, else relative to ``root``; None
    for ``""``."""
    if not str(palette):
        return None
    path = Path(palette).expanduser()
    if not path.is_absolute() and not path.is_file() and (Path(root) / path).is_file():
        path = Path(root) / path
    return path
