#!/usr/bin/env python
"""Check a folder dataset (images/, masks/, classes.txt, optional splits/) before training.

Usage::

    python tools/check_dataset.py /path/to/folder [--palette palette.txt] [--val-fraction 0.1]
        [--crop-size 512 512]

Reads every image and mask once (with a progress bar) and prints the counts and every problem
with its file name; a problem repeated for many files (the same id outside the classes in every
mask) is printed once, with the count, a few of the files and the fix (``--all`` lists every
file). Ids that classes.txt declares as ignore (``ignore: 11``) are read as 255. Errors are
what would make training or evaluation fail (unreadable files, mask/image size mismatches, ids
outside the class list, colours not in the palette, a bad classes.txt or split file); warnings
are worth a look but do not stop training (a class that never occurs, a mask without an image,
files that are ignored, images added after the split files were written, training images
smaller than the crop). Exit status: 1 when there is an error, else 0 (``--strict``: warnings
count as errors).
"""
import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from detectron2.config import get_cfg

from hiervl.config import add_hiervl_config
from hiervl.data.datasets.folder import (
    IGNORE_LABEL,
    IMAGE_EXTENSIONS,
    TEXT_ENCODING,
    FolderDatasetError,
    Palette,
    find_split_dir,
    find_stale_splits,
    folder_cache_dir,
    make_splits,
    mask_to_ids,
    parse_classes,
    parse_ignore_ids,
    parse_palette,
    read_folder_splits,
    resolve_palette_path,
    scan_folder,
)
from hiervl.data.datasets.semseg import size_mismatch_message
from hiervl.data.image_io import ImageHeader, read_image_header

ERROR, WARNING = "ERROR", "WARNING"
# A message shared by more files than this is printed once, with the count and examples.
GROUP_ABOVE = 3
EXAMPLES = 3


@dataclass
class Problem:
    """One finding: its level, the file it is about, and what is wrong."""

    level: str
    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<8}{self.file}: {self.message}"


@dataclass
class CheckReport:
    """Result of :func:`check_folder`."""

    root: Path
    problems: List[Problem] = field(default_factory=list)
    counts: Dict[str, int] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def error(self, file: str, message: str) -> None:
        self.problems.append(Problem(ERROR, file, message))

    def warning(self, file: str, message: str) -> None:
        self.problems.append(Problem(WARNING, file, message))

    @property
    def errors(self) -> List[Problem]:
        return [p for p in self.problems if p.level == ERROR]

    @property
    def warnings(self) -> List[Problem]:
        return [p for p in self.problems if p.level == WARNING]


def _default_crop_size() -> Tuple[int, int]:
    cfg = get_cfg()
    add_hiervl_config(cfg)
    return tuple(cfg.INPUT.CROP.SIZE)


def _image_size(path: Path) -> ImageHeader:
    """Size of an image as detectron2 reads it (EXIF orientation applied); decodes it fully,
    so that a truncated file is found."""
    with Image.open(path) as image:
        image.load()
    return read_image_header(str(path))


def _split_message(text: str, root: Path) -> Tuple[str, str]:
    """Split a library message ``path[:line]: message`` into (file relative to root, message)."""
    match = re.match(r"^(?P<file>[^:\s]+)(?P<line>:\d+)?: (?P<msg>.*)$", text, re.S)
    if match is None:
        return ".", text
    file = match["file"]
    try:
        file = Path(file).relative_to(root).as_posix()
    except ValueError:
        pass
    return file + (match["line"] or ""), match["msg"]


def _check_classes(root: Path, report: CheckReport) -> Tuple[Optional[List[str]], List[int]]:
    """Class names (None when there are none) and the declared ignore ids of classes.txt."""
    path = root / "classes.txt"
    if not path.is_file():
        report.error("classes.txt", "missing: one class name per line, line i = class id i-1")
        return None, []
    text = path.read_text(encoding=TEXT_ENCODING)
    names, _, problems = parse_classes(text, "classes.txt")
    ignore_ids, ignore_problems = parse_ignore_ids(text, len(names) or None, "classes.txt")
    for problem in problems + ignore_problems:
        report.error(*_split_message(problem, root))
    if ignore_ids:
        report.notes.append(
            f"classes.txt: mask ids {ignore_ids} are read as ignore ({IGNORE_LABEL})"
        )
    return (names if names else None), ignore_ids


def _check_palette(
    root: Path, palette: str, num_classes: Optional[int], report: CheckReport
) -> Optional[Palette]:
    path = resolve_palette_path(root, palette)
    if path is None:
        return None
    if not path.is_file():
        report.error(str(path), "palette file not found")
        return None
    pal, problems = parse_palette(path.read_text(encoding=TEXT_ENCODING), num_classes, str(path))
    for problem in problems:
        report.error(*_split_message(problem, root))
    return pal


def check_folder(
    root: Path,
    *,
    palette: str = "",
    val_fraction: float = 0.1,
    seed: int = 0,
    crop_size: Optional[Sequence[int]] = None,
    progress: bool = True,
) -> CheckReport:
    """Validate a folder dataset; see the module docstring.

    Args:
        root: the folder.
        palette: palette file of colour masks (``""``: masks hold class ids).
        val_fraction: VAL_FRACTION used when there are no split files (the split is only
            drawn here, not written).
        seed: seed of that draw.
        crop_size: ``(h, w)`` training crop (``INPUT.CROP.SIZE``); training images smaller in
            either side are reported. None = the default config's.
        progress: show a tqdm progress bar on stderr.
    """
    crop_h, crop_w = crop_size if crop_size is not None else _default_crop_size()
    root = Path(root).expanduser().resolve()
    report = CheckReport(root)
    if not root.is_dir():
        report.error(str(root), "folder not found")
        return report
    class_names, ignore_ids = _check_classes(root, report)
    num_classes = len(class_names) if class_names else None
    pal = _check_palette(root, palette, num_classes, report)
    palette_broken = bool(palette) and pal is None

    try:
        scan = scan_folder(root)
    except FolderDatasetError as e:
        report.error("images/", str(e))
        return report
    if not scan.images:
        report.error("images/", f"no images ({', '.join(IMAGE_EXTENSIONS)})")
    for stem, paths in scan.duplicate_images.items():
        for path in paths[1:]:
            report.error(path, f"same stem as {paths[0]}; masks pair with images by stem")
    for path in scan.orphan_masks:
        report.warning(path, "mask without an image of the same stem; ignored")
    for path in scan.ignored_files:
        if path.startswith("masks/") and path.lower().endswith(IMAGE_EXTENSIONS):
            report.warning(path, "not a PNG: ignored, so its image counts as unlabelled")
        else:
            report.warning(path, "not an image or mask file type; ignored")
    for path in list(scan.images.values()) + list(scan.masks.values()):
        if any(c.isspace() for c in path):
            report.error(path, "file name with whitespace: split files cannot hold it; rename")

    split_dir = find_split_dir(root)
    splits = None
    if split_dir is not None:
        report.notes.append(f"split files: {split_dir}")
        try:
            splits = read_folder_splits(split_dir, scan)
        except FolderDatasetError as e:
            report.error(*_split_message(str(e), root))
    elif scan.images:
        try:
            splits = make_splits(scan, val_fraction=val_fraction, seed=seed)
            report.notes.append(
                f"no split files: training draws {len(splits.val)} of "
                f"{len(splits.labeled) + len(splits.val)} labelled images for val "
                f"(VAL_FRACTION {val_fraction}, seed {seed}) and writes splits/"
            )
        except FolderDatasetError as e:
            report.error(*_split_message(str(e), root))

    report.counts = {
        "images": len(scan.images),
        "masks": len(scan.masks) + len(scan.orphan_masks),
        "labelled (train)": len(splits.labeled) if splits else 0,
        "unlabelled": len(splits.unlabeled) if splits else len(scan.unlabeled_stems),
        "val": len(splits.val) if splits else 0,
        "classes": num_classes or 0,
    }
    if splits is None:
        return report
    if not splits.unlabeled:
        report.warning(
            "images/", "no unlabelled images (images without a mask): train with SEMI.ENABLED False"
        )
    if split_dir is not None:
        _check_split_membership(scan, splits, report)

    presence = {"train": Counter(), "val": Counter()}
    converted = 0
    jobs = [("train", i, m) for i, m in splits.labeled] + [("val", i, m) for i, m in splits.val]
    jobs += [("unlabeled", i, None) for i in splits.unlabeled]
    for split, image_rel, mask_rel in tqdm(
        jobs, desc="checking", unit="img", disable=not progress, file=sys.stderr
    ):
        image = _check_image(root, image_rel, report)
        if image is not None and split != "val" and (image.height < crop_h or image.width < crop_w):
            report.warning(
                image_rel,
                f"image {image.width}x{image.height} is smaller than the training crop "
                f"{crop_w}x{crop_h} (WxH; INPUT.CROP.SIZE, --crop-size): training pads it, and "
                f"the padding is ignored in the loss",
            )
        if mask_rel is None:
            continue
        ids, needs_conversion = _check_mask(root, mask_rel, pal, palette_broken, ignore_ids, report)
        if ids is None:
            continue
        converted += needs_conversion
        if image is not None and ids.shape != (image.height, image.width):
            report.error(mask_rel, size_mismatch_message(image_rel, image, "", ids.shape))
        elif image is not None and image.orientation != 1:
            # Same size (a square image, a flip, a half turn) but maybe not the same pixels.
            report.warning(
                image_rel,
                f"EXIF orientation {image.orientation}: the image is turned or flipped when it "
                f"is read, so its mask {mask_rel} must match the image as a viewer shows it, "
                f"not the stored pixels",
            )
        values = np.unique(ids).tolist()
        if num_classes is not None:
            bad = [v for v in values if v != IGNORE_LABEL and v >= num_classes]
            if bad:
                report.error(mask_rel, _outside_message(bad, num_classes))
        presence[split].update(v for v in values if v != IGNORE_LABEL)
    if converted:
        why = "hold ignore ids or " if ignore_ids else ""
        report.notes.append(
            f"{converted} masks {why}are not 8-bit id PNGs: converted once into "
            f"{folder_cache_dir(root) / 'id_masks'} at training time"
        )
    if class_names:
        _check_class_presence(class_names, presence, report)
    return report


def _outside_message(bad: List[int], num_classes: int) -> str:
    """The error of a mask holding ids that are no class, with the fix when they may mean
    "ignore"."""
    listed = ", ".join(map(str, bad))
    message = (
        f"ids [{listed}] outside the {num_classes} classes of classes.txt "
        f"(valid: 0..{num_classes - 1} and {IGNORE_LABEL} = ignore)"
    )
    return (
        f"{message}; if {listed} means 'ignore', add the line 'ignore: {listed}' at the end of "
        f"classes.txt, else add the missing class names"
    )


def _check_split_membership(scan, splits, report: CheckReport) -> None:
    root = report.root
    seen: Dict[str, str] = {}
    for split_name, items in (
        ("labeled.txt", [i for i, _ in splits.labeled]),
        ("val.txt", [i for i, _ in splits.val]),
        ("unlabeled.txt", list(splits.unlabeled)),
    ):
        for image_rel in items:
            first = seen.get(image_rel, split_name)
            if first == split_name:
                seen[image_rel] = split_name
            elif "unlabeled.txt" in (first, split_name):
                report.warning(image_rel, f"listed in both {first} and {split_name}")
            else:
                report.error(image_rel, f"listed in both {first} and {split_name} (leak)")
    for pair in splits.labeled + splits.val:
        for path in pair:
            if not (root / path).is_file():
                report.error(path, "listed in a split file but missing")
    for image_rel in splits.unlabeled:
        if not (root / image_rel).is_file():
            report.error(image_rel, "listed in unlabeled.txt but missing")
    stale = find_stale_splits(scan, splits)
    refresh = f"python tools/make_splits.py --folder {root} adds it, val.txt unchanged"
    for path in stale.new_labeled + stale.new_unlabeled:
        report.warning(path, f"in no split file; not used ({refresh}; or delete splits/ to redraw)")
    for path in stale.now_labeled:
        report.warning(
            path, f"has a mask but is listed in unlabeled.txt: its mask is not used ({refresh})"
        )


def _check_image(root: Path, image_rel: str, report: CheckReport) -> Optional[ImageHeader]:
    path = root / image_rel
    if not path.is_file():
        return None
    try:
        return _image_size(path)
    except (OSError, SyntaxError, ValueError) as e:
        report.error(image_rel, f"unreadable image ({type(e).__name__}: {e})")
        return None


def _check_mask(
    root: Path,
    mask_rel: str,
    pal: Optional[Palette],
    palette_broken: bool,
    ignore_ids: Sequence[int],
    report: CheckReport,
) -> Tuple[Optional[np.ndarray], bool]:
    path = root / mask_rel
    if not path.is_file():
        return None, False
    try:
        with Image.open(path) as mask:
            mask.load()
            needs_conversion = not (mask.mode == "L" and mask.format == "PNG") or bool(ignore_ids)
            if palette_broken and mask.mode in ("RGB", "RGBA"):
                return None, needs_conversion
            return mask_to_ids(mask, pal, mask_rel, ignore_ids), needs_conversion
    except FolderDatasetError as e:
        report.error(*_split_message(str(e), root))
    except (OSError, SyntaxError, ValueError) as e:
        report.error(mask_rel, f"unreadable mask ({type(e).__name__}: {e})")
    return None, False


def _check_class_presence(
    class_names: Sequence[str], presence: Dict[str, Counter], report: CheckReport
) -> None:
    for class_id, name in enumerate(class_names):
        train, val = presence["train"][class_id], presence["val"][class_id]
        if not train and not val:
            report.warning("classes.txt", f"class {class_id} {name!r} never occurs in any mask")
        elif not train:
            report.warning(
                "classes.txt",
                f"class {class_id} {name!r} occurs in {val} val masks but in no training mask",
            )


def grouped_problems(problems: Sequence[Problem], list_all: bool = False) -> List[str]:
    """One line per problem, except that a message shared by more than :data:`GROUP_ABOVE`
    files becomes one line with the count and a few of the files (``list_all``: no grouping).
    Lines keep the order of each message's first occurrence."""
    if list_all:
        return [str(p) for p in problems]
    groups: Dict[Tuple[str, str], List[str]] = {}
    for p in problems:
        groups.setdefault((p.level, p.message), []).append(p.file)
    lines = []
    for (level, message), files in groups.items():
        if len(files) <= GROUP_ABOVE:
            lines += [str(Problem(level, f, message)) for f in files]
        else:
            examples = ", ".join(files[:EXAMPLES])
            kind = next(
                (k for k in ("masks", "images") if all(f.startswith(k + "/") for f in files)),
                "files",
            )
            lines.append(
                f"{level:<8}{len(files)} {kind}: {message} (e.g. {examples}; --all lists them)"
            )
    return lines


def format_report(report: CheckReport, list_all: bool = False) -> str:
    """The human-readable report: counts, notes, problems (repeated ones grouped, see
    :func:`grouped_problems`), verdict."""
    lines = [f"Folder dataset {report.root}"]
    if report.counts:
        lines.append("  " + "  ".join(f"{k}: {v}" for k, v in report.counts.items()))
    lines += [f"  {note}" for note in report.notes]
    lines += grouped_problems(report.problems, list_all)
    n_err, n_warn = len(report.errors), len(report.warnings)
    verdict = "training would fail" if n_err else "ready to train"
    lines.append(f"{n_err} error(s), {n_warn} warning(s): {verdict}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder with images/, masks/, classes.txt")
    parser.add_argument("--palette", default="", help="palette file of colour masks")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="DATASETS.CUSTOM.VAL_FRACTION"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val draw")
    parser.add_argument(
        "--crop-size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="training crop INPUT.CROP.SIZE (default: the default config's)",
    )
    parser.add_argument("--strict", action="store_true", help="warnings count as errors")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--all", action="store_true", help="one line per file, also for repeated problems"
    )
    args = parser.parse_args(argv)
    report = check_folder(
        Path(args.root),
        palette=args.palette,
        val_fraction=args.val_fraction,
        seed=args.seed,
        crop_size=args.crop_size,
        progress=not args.no_progress,
    )
    print(format_report(report, list_all=args.all))
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
