"""The splits of a folder dataset: read, drawn, checked against the disk, refreshed, written.

Split files (``labeled.txt``, ``val.txt``, optional ``unlabeled.txt``) live in ``ROOT/splits``
or, when the folder is read-only, in its cache; they are written by
:func:`~hiervl.data.datasets.semseg.write_split_files`, the package's one split writer.
"""

import logging
import os
import posixpath
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from ..semseg import SplitFileError, read_split_file, write_split_files
from .classes import FolderDatasetError
from .scan import FolderScan, folder_cache_dir, scan_folder

logger = logging.getLogger(__name__)

__all__ = [
    "FolderSplits",
    "StaleSplits",
    "find_split_dir",
    "find_stale_splits",
    "load_or_create_splits",
    "make_splits",
    "read_folder_splits",
    "refresh_splits",
    "write_folder_splits",
]


@dataclass
class FolderSplits:
    """The three splits of a folder dataset, paths relative to the folder.

    Attributes:
        labeled: ``(image, mask)`` pairs of the labelled training split.
        unlabeled: images of the unlabelled pool.
        val: ``(image, mask)`` pairs of the validation split.
        split_dir: directory of the split files read or written (None = not written yet).
    """

    labeled: List[Tuple[str, str]]
    unlabeled: List[str]
    val: List[Tuple[str, str]]
    split_dir: Optional[Path] = None

    def split_lines(self) -> Dict[str, List[str]]:
        """The lines of ``labeled.txt``, ``val.txt`` and (when the pool is not empty)
        ``unlabeled.txt``, for :func:`~hiervl.data.datasets.semseg.write_split_files`.

        Raises:
            FolderDatasetError: a path holds white space (the format is whitespace-separated).
        """
        _check_paths([p for pair in self.labeled + self.val for p in pair] + self.unlabeled)
        files = {
            "labeled.txt": [f"{i} {m}" for i, m in self.labeled],
            "val.txt": [f"{i} {m}" for i, m in self.val],
        }
        if self.unlabeled:
            files["unlabeled.txt"] = list(self.unlabeled)
        return files


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
    return FolderSplits(labeled, unlabeled, val, split_dir=split_dir)


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
    )


def _check_paths(paths: Iterable[str]) -> None:
    bad = [p for p in paths if any(c.isspace() for c in p)]
    if bad:
        raise FolderDatasetError(
            f"File names with spaces cannot go into split files (the field's format is "
            f"whitespace-separated); rename: {bad[:5]}{' ...' if len(bad) > 5 else ''}"
        )


def write_folder_splits(splits: FolderSplits, directory: os.PathLike) -> Path:
    """Write the split files of ``splits`` (see :meth:`FolderSplits.split_lines`) into
    ``directory``, each replaced atomically, and set ``splits.split_dir``. Returns
    ``directory``."""
    splits.split_dir = write_split_files(directory, splits.split_lines())
    return splits.split_dir


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
            write_folder_splits(splits, root / "splits")
        except PermissionError:
            write_folder_splits(splits, folder_cache_dir(root) / "splits")
        except OSError as e:
            logger.info("Cannot write to %s (%s); writing the splits to the cache", root, e)
            write_folder_splits(splits, folder_cache_dir(root) / "splits")
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
