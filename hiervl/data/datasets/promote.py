"""Move images of a folder dataset from its unlabelled pool into its labelled split.

After ``tools/rank_unlabeled.py`` has said which images to label next and their masks are under
``masks/`` (same stem as the image), :func:`promote_to_labeled` edits the folder's split files:
the images leave ``unlabeled.txt`` and join ``labeled.txt`` with their masks. Nothing is
deleted: the split files as they were are copied to ``<split dir>/history/<time>/`` first, and
no image or mask is touched (an ``unlabeled.txt`` left empty is taken away, its copy kept in the
history). A missing mask refuses the whole move, naming the images.
"""

import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

from .folder import (
    FolderDatasetError,
    FolderSplits,
    find_split_dir,
    read_folder_splits,
    scan_folder,
)
from .semseg import write_split_files

__all__ = ["PromoteResult", "promote_to_labeled"]

logger = logging.getLogger(__name__)


@dataclass
class PromoteResult:
    """What :func:`promote_to_labeled` did.

    Attributes:
        moved: ``(image, mask)`` pairs added to ``labeled.txt`` (paths relative to the folder).
        already_labeled: images that were in ``labeled.txt`` already (left as they were).
        split_dir: the edited split files' directory.
        backup_dir: where the previous split files were copied.
    """

    moved: List[Tuple[str, str]]
    already_labeled: List[str]
    split_dir: Path
    backup_dir: Path


def _relative(root: Path, image: str) -> str:
    """An image path (absolute, or relative to the folder) as a POSIX path relative to it."""
    path = Path(image).expanduser()
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root)
        except ValueError:
            raise FolderDatasetError(f"{image} is not inside the folder dataset {root}") from None
    return path.as_posix()


def promote_to_labeled(root: os.PathLike, images: Sequence[str]) -> PromoteResult:
    """Move ``images`` from the folder's unlabelled pool into its labelled split.

    Args:
        root: the folder dataset (``images/``, ``masks/``, split files in ``ROOT/splits`` or
            the cache, see :func:`~hiervl.data.datasets.folder.find_split_dir`).
        images: image paths, absolute or relative to ``root``.

    Returns:
        :class:`PromoteResult`.

    Raises:
        FolderDatasetError: no split files yet; an image that is not in the pool (nor labelled
            already); images without a mask under ``masks/`` (all named; nothing is changed).
    """
    root = Path(root).expanduser().resolve()
    scan = scan_folder(root)
    split_dir = find_split_dir(root)
    if split_dir is None:
        raise FolderDatasetError(
            f"{root}: no split files yet; register the folder once (train_net.py or "
            f"tools/register_folder.py write them)"
        )
    splits = read_folder_splits(split_dir, scan)
    labeled = {image for image, _ in splits.labeled}
    has_pool_file = (split_dir / "unlabeled.txt").is_file()
    if has_pool_file:
        pool = set(splits.unlabeled)
    else:
        # The pool is every image without a mask, and the chosen ones have one by now: any
        # image of the folder outside the labelled and val splits.
        val = {image for image, _ in splits.val}
        pool = {p for p in scan.images.values() if p not in labeled and p not in val}
    stems = {path: stem for stem, path in scan.images.items()}
    wanted = list(dict.fromkeys(_relative(root, i) for i in images))
    already = [i for i in wanted if i in labeled]
    unknown = [i for i in wanted if i not in labeled and i not in pool]
    if unknown:
        raise FolderDatasetError(
            f"{root}: not in the unlabelled pool of {split_dir}: {', '.join(unknown)}"
        )
    moving = [i for i in wanted if i in pool]
    missing = [i for i in moving if stems.get(i) not in scan.masks]
    if missing:
        raise FolderDatasetError(
            f"{root}: no mask under masks/ (same stem as the image) for: {', '.join(missing)}; "
            f"nothing was moved"
        )
    pairs = [(i, scan.masks[stems[i]]) for i in moving]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup, count = split_dir / "history" / stamp, 1
    while backup.exists():  # two moves within a second keep both copies
        backup, count = split_dir / "history" / f"{stamp}-{count}", count + 1
    if pairs:
        backup.mkdir(parents=True)
        for name in ("labeled.txt", "unlabeled.txt", "val.txt"):
            if (split_dir / name).is_file():
                shutil.copy2(split_dir / name, backup / name)
        moved = set(moving)
        updated = FolderSplits(
            labeled=splits.labeled + pairs,
            unlabeled=[i for i in splits.unlabeled if i not in moved],
            val=splits.val,
        )
        # Each replaced atomically: labeled.txt always, and unlabeled.txt when the folder has
        # one (without it the pool is every image without a mask, which the promoted images
        # now leave by themselves). A split file may not be empty: an emptied pool's file goes
        # (it is in the history copy).
        lines = updated.split_lines()
        files = {"labeled.txt": lines["labeled.txt"]}
        if has_pool_file and updated.unlabeled:
            files["unlabeled.txt"] = lines["unlabeled.txt"]
        write_split_files(split_dir, files)
        if has_pool_file and not updated.unlabeled:
            os.remove(split_dir / "unlabeled.txt")
        logger.info(
            "Moved %d image(s) into %s (previous split files in %s)",
            len(pairs),
            split_dir / "labeled.txt",
            backup,
        )
    return PromoteResult(pairs, already, split_dir, backup)
