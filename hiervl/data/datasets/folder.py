"""Your own data: a folder of images, some masks and a class list, registered without code.

Layout of a folder dataset (``ROOT``)::

    images/     RGB images (.jpg .jpeg .png .bmp), sub-folders allowed
    masks/      one PNG per labelled image, same relative path and stem as its image:
                single-channel class ids (255 = ignore), or colour PNGs plus a palette file
    classes.txt one class name per line, line i = class id i; optional TAB-separated
                descriptions after the name (dataset-aware prompts); optionally, after the
                class names, ``ignore: 11`` lines naming mask ids that mean "ignore"
    splits/     optional: labeled.txt, val.txt (both or neither) and unlabeled.txt, one
                ``image [mask]`` line per sample, paths relative to ROOT (the field's format)

Images without a mask form the unlabelled pool. Without split files the labelled images are
split into train / val by a seeded draw, and the split files are WRITTEN (to ``ROOT/splits`` or,
when the folder is read-only, to the cache) so that every run sees the same, visible split.

Masks that are not 8-bit single-channel PNGs (colour masks, palette-mode, 16-bit) are converted
once into id PNGs under the cache (``$HIERVL_CACHE_DIR`` or ``~/.cache/hiervl``), because the
evaluator reads ``sem_seg_file_name`` directly. The palette file holds one ``R G B`` or
``#rrggbb`` line per class in class-id order; extra lines ending in the word ``ignore`` name
colours mapped to 255. Id masks whose "ignore" value is not 255 (CamVid's void 11) declare it
in classes.txt (``ignore: 11``); those masks are converted the same way, the declared ids
becoming 255, so that training, pseudo-labels and evaluation all see one ignore label.

Registered names: ``<NAME>_train_labeled``, ``<NAME>_train_unlabeled``, ``<NAME>_val``, all
through :func:`~hiervl.data.datasets.semseg.register_semseg_split`.
"""

import hashlib
import logging
import os
import posixpath
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ..image_io import ImageReadError
from .demo import demo_cache_dir
from .semseg import SplitFileError, read_split_file, register_semseg_split

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "IGNORE_LABEL",
    "FolderDatasetError",
    "Palette",
    "FolderScan",
    "FolderSplits",
    "FolderDataset",
    "parse_classes",
    "read_classes",
    "parse_ignore_ids",
    "read_ignore_ids",
    "parse_palette",
    "read_palette",
    "distinct_colors",
    "mask_to_ids",
    "scan_folder",
    "find_split_dir",
    "read_folder_splits",
    "make_splits",
    "write_split_files",
    "load_or_create_splits",
    "StaleSplits",
    "find_stale_splits",
    "refresh_splits",
    "folder_cache_dir",
    "resolve_palette_path",
    "register_folder",
    "register_folder_from_cfg",
    "export_demo_as_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MASK_EXTENSIONS = (".png",)
IGNORE_LABEL = 255
SPLIT_FILES = ("labeled.txt", "unlabeled.txt", "val.txt")
# Encoding of the text files a user writes (classes.txt, palette): UTF-8, where a leading
# byte-order mark (written by some Windows editors) is dropped, not read into the first name.
TEXT_ENCODING = "utf-8-sig"
RGB = Tuple[int, int, int]


class FolderDatasetError(ValueError):
    """A folder dataset cannot be registered or read; the message names the file at fault."""


# ---- class list and palette ------------------------------------------------------------------


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


def _unpack(key: int) -> RGB:
    return (key >> 16) & 255, (key >> 8) & 255, key & 255


_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


def _parse_color(token_list: List[str]) -> Optional[RGB]:
    if len(token_list) == 1 and _HEX.match(token_list[0]):
        value = int(token_list[0][1:], 16)
        return _unpack(value)
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
    """``num`` distinct RGB colours, the same for every call (PASCAL VOC's bit-spread map).

    Args:
        num: number of colours, at most 255 (id 255 is the ignore label).
    """
    colors = []
    for index in range(num):
        r = g = b = 0
        code = index
        for bit in range(7, -1, -1):
            r |= (code & 1) << bit
            g |= ((code >> 1) & 1) << bit
            b |= ((code >> 2) & 1) << bit
            code >>= 3
        colors.append((r, g, b))
    return colors


# ---- masks -----------------------------------------------------------------------------------


def mask_to_ids(
    mask: Image.Image,
    palette: Optional[Palette],
    file_name: str,
    ignore_ids: Sequence[int] = (),
) -> np.ndarray:
    """Turn a mask image of any supported kind into class ids, with every ignore id as 255.

    Args:
        mask: the opened mask (see :func:`_decode_mask` for the supported kinds).
        palette: colours of the classes, or None.
        file_name: named in error messages.
        ignore_ids: mask values that mean "ignore" besides 255 (classes.txt's ``ignore:``).

    Returns:
        uint8 ids ``[H, W]`` (255 = ignore; values are not checked against the class count).
    """
    ids = _decode_mask(mask, palette, file_name)
    if len(ignore_ids):
        ids[np.isin(ids, list(ignore_ids))] = IGNORE_LABEL
    return ids


def _decode_mask(mask: Image.Image, palette: Optional[Palette], file_name: str) -> np.ndarray:
    """The values of a mask image of any supported kind (a new array).

    Supported: 8-bit grey (``L``), palette-mode (``P``: the index is the id, as in VOC),
    16/32-bit grey (values up to 255), 1-bit, and colour (``RGB``/``RGBA``, alpha ignored)
    mapped through ``palette``; without a palette a colour mask whose three channels are equal
    is read as grey.

    Args:
        mask: the opened mask.
        palette: colours of the classes, or None.
        file_name: named in error messages.

    Returns:
        uint8 ids ``[H, W]`` (255 = ignore; values are not checked against the class count).
    """
    mode = mask.mode
    if mode in ("L", "P"):
        return np.array(mask, dtype=np.uint8)
    if mode == "1":
        return np.array(mask, dtype=np.uint8)
    if mode == "LA":
        return np.array(mask.getchannel("L"), dtype=np.uint8)
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.array(mask, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise FolderDatasetError(
                f"{file_name}: mask values {int(values.min())}..{int(values.max())} do not fit "
                f"class ids 0..254 and ignore 255"
            )
        return values.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        rgb = np.array(mask.convert("RGB"), dtype=np.uint8)
        if palette is None:
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
                rgb[..., 0], rgb[..., 2]
            ):
                return rgb[..., 0].copy()
            raise FolderDatasetError(
                f"{file_name}: colour mask but no palette file given (DATASETS.CUSTOM.PALETTE or "
                f"--palette); save masks as single-channel class ids or pass the palette"
            )
        packed = (
            (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        )
        colors, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
        table = palette.lookup()
        unknown = [(int(c), int(n)) for c, n in zip(colors, counts) if int(c) not in table]
        if unknown:
            unknown.sort(key=lambda cn: -cn[1])
            listed = ", ".join(f"{_unpack(c)} ({n} px)" for c, n in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise FolderDatasetError(f"{file_name}: colours not in the palette: {listed}{more}")
        ids = np.array([table[int(c)] for c in colors], dtype=np.uint8)
        return ids[inverse.reshape(packed.shape)]
    raise FolderDatasetError(f"{file_name}: unsupported mask image mode {mode!r}")


def _write_png_atomic(path: Path, ids: np.ndarray) -> None:
    """Write an 8-bit id PNG via a temporary file, so concurrent writers never expose half files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", prefix=".tmp-", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(ids).save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---- scanning --------------------------------------------------------------------------------


@dataclass
class FolderScan:
    """What is on disk under a folder dataset's ``images/`` and ``masks/``.

    Keys are stems: the path below ``images/`` (or ``masks/``) without extension, POSIX style.

    Attributes:
        root: the folder.
        images: stem → image path relative to ``root``, sorted by stem.
        masks: stem → mask path relative to ``root``.
        duplicate_images: stems with more than one image file (all their paths).
        orphan_masks: mask paths whose stem has no image.
        ignored_files: files under ``images/`` or ``masks/`` with another extension.
    """

    root: Path
    images: Dict[str, str]
    masks: Dict[str, str]
    duplicate_images: Dict[str, List[str]]
    orphan_masks: List[str]
    ignored_files: List[str]

    @property
    def labeled_stems(self) -> List[str]:
        return [s for s in self.images if s in self.masks]

    @property
    def unlabeled_stems(self) -> List[str]:
        return [s for s in self.images if s not in self.masks]


def _list_files(directory: Path, extensions: Sequence[str]) -> Tuple[List[Path], List[Path]]:
    matched, other = [], []
    if not directory.is_dir():
        return matched, other
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (matched if path.suffix.lower() in extensions else other).append(path)
    return matched, other


def scan_folder(root: os.PathLike) -> FolderScan:
    """List images and masks of a folder dataset and pair them by stem.

    Args:
        root: the folder (must hold ``images/``).
    """
    root = Path(root)
    if not (root / "images").is_dir():
        raise FolderDatasetError(f"No images/ folder in {root}")
    image_files, other_images = _list_files(root / "images", IMAGE_EXTENSIONS)
    mask_files, other_masks = _list_files(root / "masks", MASK_EXTENSIONS)

    by_stem: Dict[str, List[str]] = {}
    for path in image_files:
        stem = path.relative_to(root / "images").with_suffix("").as_posix()
        by_stem.setdefault(stem, []).append(path.relative_to(root).as_posix())
    images = {s: paths[0] for s, paths in sorted(by_stem.items())}
    duplicates = {s: paths for s, paths in sorted(by_stem.items()) if len(paths) > 1}

    masks: Dict[str, str] = {}
    orphans: List[str] = []
    for path in mask_files:
        stem = path.relative_to(root / "masks").with_suffix("").as_posix()
        rel = path.relative_to(root).as_posix()
        if stem in images:
            masks[stem] = rel
        else:
            orphans.append(rel)
    ignored = [p.relative_to(root).as_posix() for p in other_images + other_masks]
    return FolderScan(root, images, masks, duplicates, orphans, ignored)


# ---- splits ----------------------------------------------------------------------------------


@dataclass
class FolderSplits:
    """The three splits of a folder dataset, paths relative to the folder.

    Attributes:
        labeled: ``(image, mask)`` pairs of the labelled training split.
        unlabeled: images of the unlabelled pool.
        val: ``(image, mask)`` pairs of the validation split.
        split_dir: directory of the split files read or written (None = not written yet).
        generated: True when this run drew the split (no split files existed).
    """

    labeled: List[Tuple[str, str]]
    unlabeled: List[str]
    val: List[Tuple[str, str]]
    split_dir: Optional[Path] = None
    generated: bool = False


def folder_cache_dir(root: os.PathLike) -> Path:
    """The cache directory of one folder dataset (converted masks, splits of read-only folders).

    ``$HIERVL_CACHE_DIR`` (or ``~/.cache/hiervl``) ``/folders/<folder name>-<hash of its path>``.
    """
    root = Path(root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    return demo_cache_dir() / "folders" / f"{root.name}-{digest}"


def find_split_dir(root: os.PathLike) -> Optional[Path]:
    """``ROOT/splits`` or the cache's ``splits``, whichever holds ``labeled.txt`` or
    ``val.txt`` first; None when neither does."""
    for directory in (Path(root) / "splits", folder_cache_dir(root) / "splits"):
        if (directory / "labeled.txt").is_file() or (directory / "val.txt").is_file():
            return directory
    return None


def read_folder_splits(split_dir: os.PathLike, scan: FolderScan) -> FolderSplits:
    """Read split files of the field's format from ``split_dir``.

    ``labeled.txt`` and ``val.txt`` are both required; ``unlabeled.txt`` is optional (absent =
    every image without a mask). Unlabelled lines may name a mask; it is ignored.

    Args:
        split_dir: directory holding the split files.
        scan: the folder's scan (for the default unlabelled pool).
    """
    split_dir = Path(split_dir)
    missing = [n for n in ("labeled.txt", "val.txt") if not (split_dir / n).is_file()]
    if missing:
        raise FolderDatasetError(
            f"{split_dir}: split files {missing} missing (labeled.txt and val.txt go together; "
            f"remove both to draw a split from VAL_FRACTION)"
        )
    try:
        labeled = [(i, m) for _, i, m in read_split_file(split_dir / "labeled.txt")]
        val = [(i, m) for _, i, m in read_split_file(split_dir / "val.txt")]
        if (split_dir / "unlabeled.txt").is_file():
            unlabeled = [
                i for _, i, _ in read_split_file(split_dir / "unlabeled.txt", labeled=False)
            ]
        else:
            unlabeled = [scan.images[s] for s in scan.unlabeled_stems]
    except SplitFileError as e:
        raise FolderDatasetError(str(e)) from e
    return FolderSplits(labeled, unlabeled, val, split_dir=split_dir, generated=False)


@dataclass
class StaleSplits:
    """Images on disk that a folder's split files leave out (added after they were written).

    Paths are relative to the folder, in stem order.

    Attributes:
        new_labeled: images with a mask, listed in no split file.
        now_labeled: images listed in ``unlabeled.txt`` that have a mask now.
        new_unlabeled: images without a mask, listed in no split file (only when the split
            files include ``unlabeled.txt``: without it the pool is every image without a mask).
    """

    new_labeled: List[str]
    now_labeled: List[str]
    new_unlabeled: List[str]

    def __bool__(self) -> bool:
        return bool(self.new_labeled or self.now_labeled or self.new_unlabeled)

    def describe(self, root: os.PathLike, split_dir: os.PathLike) -> str:
        """What is left out and the two ways to refresh the split files."""
        parts = []
        for paths, what in (
            (self.new_labeled, "with a mask, in no split file"),
            (self.now_labeled, "listed in unlabeled.txt that have a mask now"),
            (self.new_unlabeled, "without a mask, in no split file"),
        ):
            if paths:
                more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
                parts.append(f"{len(paths)} image(s) {what} ({', '.join(paths[:3])}{more})")
        return (
            f"Folder dataset {root}: files added after the split files in {split_dir} were "
            f"written are not used as they should be: {'; '.join(parts)}. To add them (val.txt "
            f"stays as it is): python tools/make_splits.py --folder {root}; to draw a new "
            f"train / val split instead: delete {split_dir}"
        )


def find_stale_splits(scan: FolderScan, splits: FolderSplits) -> StaleSplits:
    """Compare a folder's split files with what is on disk (see :class:`StaleSplits`).

    Args:
        scan: the folder's scan.
        splits: its split files, as :func:`read_folder_splits` returns them.
    """
    norm = posixpath.normpath
    labeled = {norm(i) for i, _ in splits.labeled + splits.val}
    unlabeled = {norm(i) for i in splits.unlabeled}
    new_labeled, now_labeled, new_unlabeled = [], [], []
    for stem, image in scan.images.items():
        if image in labeled:
            continue
        if stem in scan.masks:
            (now_labeled if image in unlabeled else new_labeled).append(image)
        elif image not in unlabeled:
            new_unlabeled.append(image)
    return StaleSplits(new_labeled, now_labeled, new_unlabeled)


def refresh_splits(scan: FolderScan, splits: FolderSplits) -> FolderSplits:
    """The split files plus what :func:`find_stale_splits` finds: new and newly labelled
    images are appended to the labelled training split, new unlabelled ones to the pool;
    ``val`` and every listed image keep their place (results stay comparable)."""
    stale = find_stale_splits(scan, splits)
    by_image = {image: stem for stem, image in scan.images.items()}
    moved = set(stale.now_labeled)
    added = sorted(stale.new_labeled + stale.now_labeled)
    return FolderSplits(
        labeled=splits.labeled + [(i, scan.masks[by_image[i]]) for i in added],
        unlabeled=[i for i in splits.unlabeled if posixpath.normpath(i) not in moved]
        + stale.new_unlabeled,
        val=list(splits.val),
        split_dir=splits.split_dir,
    )


def make_splits(scan: FolderScan, *, val_fraction: float, seed: int = 0) -> FolderSplits:
    """Draw the train / val split of the labelled images (deterministic for a seed).

    ``round(val_fraction * n)`` labelled images, at least 1 and at most ``n - 1``, go to val;
    both lists keep the sorted stem order.

    Args:
        scan: the folder's scan.
        val_fraction: fraction of labelled images held out, in ``(0, 1)``.
        seed: seed of the draw.
    """
    if not 0.0 < val_fraction < 1.0:
        raise FolderDatasetError(f"VAL_FRACTION must be in (0, 1), got {val_fraction}")
    stems = scan.labeled_stems
    if len(stems) < 2:
        raise FolderDatasetError(
            f"{scan.root}: {len(stems)} labelled image(s) (an image with a mask of the same stem "
            f"under masks/); at least 2 are needed to hold one out for validation"
        )
    num_val = min(max(int(round(val_fraction * len(stems))), 1), len(stems) - 1)
    order = list(stems)
    random.Random(seed).shuffle(order)
    val_set = set(order[:num_val])
    pairs = {s: (scan.images[s], scan.masks[s]) for s in stems}
    return FolderSplits(
        labeled=[pairs[s] for s in stems if s not in val_set],
        unlabeled=[scan.images[s] for s in scan.unlabeled_stems],
        val=[pairs[s] for s in stems if s in val_set],
        generated=True,
    )


def _check_paths(paths: Iterable[str]) -> None:
    bad = [p for p in paths if any(c.isspace() for c in p)]
    if bad:
        raise FolderDatasetError(
            f"File names with spaces cannot go into split files (the field's format is "
            f"whitespace-separated); rename: {bad[:5]}{' ...' if len(bad) > 5 else ''}"
        )


def write_split_files(splits: FolderSplits, directory: os.PathLike) -> Path:
    """Write ``labeled.txt``, ``val.txt`` and (when the pool is not empty) ``unlabeled.txt``.

    Files are replaced atomically. Returns ``directory``.
    """
    directory = Path(directory)
    _check_paths([p for pair in splits.labeled + splits.val for p in pair] + splits.unlabeled)
    directory.mkdir(parents=True, exist_ok=True)
    contents = {
        "labeled.txt": "".join(f"{i} {m}\n" for i, m in splits.labeled),
        "val.txt": "".join(f"{i} {m}\n" for i, m in splits.val),
    }
    if splits.unlabeled:
        contents["unlabeled.txt"] = "".join(f"{i}\n" for i in splits.unlabeled)
    for name, text in contents.items():
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, directory / name)
    splits.split_dir = directory
    return directory


def load_or_create_splits(
    root: os.PathLike, *, val_fraction: float, seed: int = 0, write: bool = True
) -> FolderSplits:
    """The folder's splits: read from split files when they exist, else drawn and written.

    Split files are looked for in ``ROOT/splits`` then the folder's cache; images added after
    they were written are not used, and a warning names them (see :func:`find_stale_splits`).
    A drawn split is written to ``ROOT/splits`` (the cache when the folder is not writable)
    unless ``write`` is False.
    """
    root = Path(root)
    scan = scan_folder(root)
    split_dir = find_split_dir(root)
    if split_dir is not None:
        logger.info("Folder dataset %s: using split files in %s", root, split_dir)
        splits = read_folder_splits(split_dir, scan)
        stale = find_stale_splits(scan, splits)
        if stale:  # never re-split silently: say what is left out and how to add it
            logger.warning(stale.describe(root, split_dir))
        return splits
    splits = make_splits(scan, val_fraction=val_fraction, seed=seed)
    if write:
        try:
            write_split_files(splits, root / "splits")
        except PermissionError:
            write_split_files(splits, folder_cache_dir(root) / "splits")
        except OSError as e:
            logger.info("Cannot write to %s (%s); writing the splits to the cache", root, e)
            write_split_files(splits, folder_cache_dir(root) / "splits")
        logger.info(
            "Folder dataset %s: drew %d train / %d val labelled images (VAL_FRACTION %.3g, "
            "seed %d) and wrote the split files to %s; delete them to draw again",
            root,
            len(splits.labeled),
            len(splits.val),
            val_fraction,
            seed,
            splits.split_dir,
        )
    return splits


# ---- registration ----------------------------------------------------------------------------


@dataclass
class FolderDataset:
    """What :func:`register_folder` registered.

    Attributes:
        root: the folder.
        names: ``{"train_labeled": ..., "train_unlabeled": ..., "val": ...}`` dataset names.
        class_names: ``C`` class names.
        counts: number of images per split (same keys as ``names``).
        split_dir: where the split files are.
    """

    root: Path
    names: Dict[str, str]
    class_names: List[str]
    counts: Dict[str, int]
    split_dir: Optional[Path]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def resolve_palette_path(root: os.PathLike, palette: os.PathLike) -> Optional[Path]:
    """The palette file: ``palette`` as given when it exists, else relative to ``root``; None
    for ``""``."""
    if not str(palette):
        return None
    path = Path(palette).expanduser()
    if not path.is_absolute() and not path.is_file() and (Path(root) / path).is_file():
        path = Path(root) / path
    return path


class _MaskResolver:
    """Maps a split line's mask onto an 8-bit id PNG with 255 as the only ignore value,
    converting other kinds (and, when classes.txt declares ignore ids, every mask) into the
    cache."""

    def __init__(
        self, root: Path, palette: Optional[Palette], cache: Path, ignore_ids: Sequence[int] = ()
    ):
        self.root = root
        self.palette = palette
        self.ignore_ids = list(ignore_ids)
        key = palette.digest() if palette else "ids"
        if self.ignore_ids:
            key += "-ignore" + "_".join(map(str, self.ignore_ids))
        self.cache = cache / "id_masks" / key

    def __call__(self, mask_rel: str) -> str:
        source = self.root / mask_rel
        if not source.is_file():
            return mask_rel
        try:
            with Image.open(source) as mask:
                if mask.mode == "L" and mask.format == "PNG" and not self.ignore_ids:
                    return mask_rel
                target = self.cache / Path(mask_rel).with_suffix(".png")
                if target.is_file() and target.stat().st_mtime > source.stat().st_mtime:
                    return str(target)
                ids = mask_to_ids(mask, self.palette, str(source), self.ignore_ids)
        except FolderDatasetError:
            raise
        except (OSError, SyntaxError, ValueError) as e:  # PIL's messages name no file
            raise ImageReadError(f"{source}: cannot read mask ({type(e).__name__}: {e})") from e
        _write_png_atomic(target, ids)
        return str(target)


def _no_unlabeled(root: Path) -> None:
    raise FolderDatasetError(
        f"{root}: no unlabelled images (images without a mask); add some or train supervised "
        f"with SEMI.ENABLED False"
    )


def register_folder(
    root: os.PathLike,
    *,
    name: str = "custom",
    palette: os.PathLike = "",
    val_fraction: float = 0.1,
    seed: int = 0,
    write_splits: bool = True,
) -> FolderDataset:
    """Register ``<name>_train_labeled``, ``<name>_train_unlabeled`` and ``<name>_val``.

    Reads ``classes.txt`` and the palette, scans the folder, reads or draws the splits (see
    :func:`load_or_create_splits`) and registers each split with the standard metadata
    (``stuff_classes``, ``stuff_colors`` from the palette or :func:`distinct_colors`,
    ``ignore_label`` 255, ``evaluator_type`` sem_seg, ``class_descriptions``). Masks that need
    converting (colour, palette-mode, 16-bit, or any mask when classes.txt declares ignore ids:
    those ids become 255, the ``ignore_label`` the evaluator and the trainer see) are converted
    lazily, once, on ``DatasetCatalog.get``. Names registered before are replaced.

    Args:
        root: the folder.
        name: prefix of the registered names.
        palette: palette file for colour masks (absolute, or relative to the working directory
            or to ``root``); ``""`` for none.
        val_fraction: fraction of labelled images held out when no split files exist.
        seed: seed of that draw.
        write_splits: write a drawn split to split files (see :func:`load_or_create_splits`).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise FolderDatasetError(f"Folder dataset not found: {root}")
    class_names, descriptions = read_classes(root / "classes.txt")
    ignore_ids = read_ignore_ids(root / "classes.txt", len(class_names))
    palette_path = resolve_palette_path(root, palette)
    pal = read_palette(palette_path, len(class_names)) if palette_path is not None else None
    colors = pal.class_colors if pal is not None else distinct_colors(len(class_names))

    duplicates = scan_folder(root).duplicate_images
    if duplicates:
        listed = "; ".join(", ".join(paths) for paths in list(duplicates.values())[:5])
        raise FolderDatasetError(
            f"{root}: images sharing a stem (masks pair with images by stem; rename): {listed}"
        )
    splits = load_or_create_splits(root, val_fraction=val_fraction, seed=seed, write=write_splits)
    if splits.split_dir is None:
        splits.split_dir = write_split_files(
            splits, Path(tempfile.mkdtemp(prefix=f"{name}-splits-"))
        )
    split_dir = splits.split_dir
    cache = folder_cache_dir(root)
    common = dict(
        root=root,
        stuff_classes=class_names,
        stuff_colors=colors,
        ignore_label=IGNORE_LABEL,
        resolve_mask=_MaskResolver(root, pal, cache, ignore_ids),
        class_descriptions=descriptions,
    )
    names = {k: f"{name}_{k}" for k in ("train_labeled", "train_unlabeled", "val")}
    for dataset_name in names.values():
        if dataset_name in DatasetCatalog.list():
            logger.info("Replacing the registered dataset %s", dataset_name)
            DatasetCatalog.remove(dataset_name)
            MetadataCatalog.remove(dataset_name)
    register_semseg_split(names["train_labeled"], split_file=split_dir / "labeled.txt", **common)
    register_semseg_split(names["val"], split_file=split_dir / "val.txt", **common)
    unlabeled_file = split_dir / "unlabeled.txt"
    if splits.unlabeled and not unlabeled_file.is_file():
        # unlabeled.txt absent from user-given split files: the pool is every image without mask.
        unlabeled_file = (
            write_split_files(FolderSplits([], splits.unlabeled, []), cache / "pool")
            / "unlabeled.txt"
        )
    register_semseg_split(
        names["train_unlabeled"],
        split_file=unlabeled_file,
        labeled=False,
        prepare=None if splits.unlabeled else (lambda: _no_unlabeled(root)),
        **common,
    )
    counts = {
        "train_labeled": len(splits.labeled),
        "train_unlabeled": len(splits.unlabeled),
        "val": len(splits.val),
    }
    logger.info(
        "Registered folder dataset %s: %d classes, %s%s",
        root,
        len(class_names),
        ", ".join(f"{names[k]}={v}" for k, v in counts.items()),
        f"; mask ids {ignore_ids} read as ignore (255)" if ignore_ids else "",
    )
    return FolderDataset(root, names, class_names, counts, split_dir)


def register_folder_from_cfg(cfg, *, set_num_classes: bool = True) -> Optional[FolderDataset]:
    """Register the folder of ``cfg.DATASETS.CUSTOM`` (ROOT, NAME, PALETTE, VAL_FRACTION).

    Call it before ``cfg.freeze()`` in ``train_net.py`` and the demo: the class count comes
    from the folder's ``classes.txt``, so ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` is set from it.

    Args:
        cfg: the config; does nothing (returns None) when ``DATASETS.CUSTOM.ROOT`` is ``""``.
        set_num_classes: set ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` to the folder's class count. A frozen
            config is left as is when the count already matches, else an error is raised.

    Returns:
        what was registered (``num_classes``, names, split sizes), or None.
    """
    custom = cfg.DATASETS.CUSTOM
    if not custom.ROOT:
        return None
    info = register_folder(
        custom.ROOT,
        name=custom.NAME,
        palette=custom.PALETTE,
        val_fraction=float(custom.VAL_FRACTION),
    )
    head = cfg.MODEL.SEM_SEG_HEAD
    if set_num_classes and head.NUM_CLASSES != info.num_classes:
        if cfg.is_frozen():
            raise FolderDatasetError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={head.NUM_CLASSES} but {info.root}/classes.txt "
                f"has {info.num_classes} classes; call register_folder_from_cfg before "
                "cfg.freeze()"
            )
        logger.info(
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES set to %d (classes.txt of %s)",
            info.num_classes,
            info.root,
        )
        head.NUM_CLASSES = info.num_classes
    return info


# ---- the demo dataset as a folder ------------------------------------------------------------


def export_demo_as_folder(dest: os.PathLike) -> Path:
    """Write the embedded demo dataset (default budget) as a folder dataset.

    ``images/`` and ``masks/`` keep the demo's relative paths (so image ids are unchanged);
    unlabelled images get no mask; ``classes.txt`` carries the class descriptions,
    ``palette.txt`` the demo colours, and ``splits/`` the demo's exact split membership and
    order. Registering the result with ``palette="palette.txt"`` gives the same dataset dicts
    (modulo the root) and metadata as ``hiervl_demo_*``.

    Args:
        dest: the folder to create (may exist; files are overwritten).

    Returns:
        ``dest``.
    """
    dest = Path(dest)
    meta = MetadataCatalog.get("hiervl_demo_train_labeled")
    split_names = {
        "labeled.txt": "hiervl_demo_train_labeled",
        "unlabeled.txt": "hiervl_demo_train_unlabeled",
        "val.txt": "hiervl_demo_val",
    }
    splits: Dict[str, List] = {}
    for file_name, dataset_name in split_names.items():
        source = Path(MetadataCatalog.get(dataset_name).image_root)
        entries = []
        for record in DatasetCatalog.get(dataset_name):
            rels = [Path(record["file_name"]).relative_to(source).as_posix()]
            if "sem_seg_file_name" in record:
                rels.append(Path(record["sem_seg_file_name"]).relative_to(source).as_posix())
            for rel in rels:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / rel, dest / rel)
            entries.append(tuple(rels) if len(rels) == 2 else rels[0])
        splits[file_name] = entries
    lines = ["\t".join([n] + list(d)) for n, d in zip(meta.stuff_classes, meta.class_descriptions)]
    (dest / "classes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dest / "palette.txt").write_text(
        "".join(f"{r} {g} {b}\n" for r, g, b in meta.stuff_colors), encoding="utf-8"
    )
    write_split_files(
        FolderSplits(splits["labeled.txt"], splits["unlabeled.txt"], splits["val.txt"]),
        dest / "splits",
    )
    return dest
