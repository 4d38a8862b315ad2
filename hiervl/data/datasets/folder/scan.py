"""What is on disk in a folder dataset (images paired with masks by stem), and its cache."""

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..demo import demo_cache_dir
from .classes import FolderDatasetError

__all__ = ["IMAGE_EXTENSIONS", "FolderScan", "folder_cache_dir", "scan_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
MASK_EXTENSIONS = (".png",)


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


def folder_cache_dir(root: os.PathLike) -> Path:
    """The cache directory of one folder dataset (converted masks, splits of read-only folders).

    ``$HIERVL_CACHE_DIR`` (or ``~/.cache/hiervl``) ``/folders/<folder name>-<hash of its path>``.
    """
    root = Path(root).resolve()
    digest = hashlib.sha1(str(root).encode()).hexdigest()[:10]
    return demo_cache_dir() / "folders" / f"{root.name}-{digest}"
