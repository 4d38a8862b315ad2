"""Registration of a folder dataset: ``<NAME>_train_labeled``, ``_train_unlabeled``, ``_val``."""

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..semseg import register_semseg_split
from .classes import IGNORE_LABEL, FolderDatasetError, read_classes, read_ignore_ids
from .masks import IdMaskCache
from .palette import distinct_colors, read_palette, resolve_palette_path
from .scan import folder_cache_dir, scan_folder
from .splits import FolderSplits, load_or_create_splits, write_folder_splits

logger = logging.getLogger(__name__)

__all__ = ["FolderDataset", "register_folder", "register_folder_from_cfg"]


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
        write_folder_splits(splits, tempfile.mkdtemp(prefix=f"{name}-splits-"))
    split_dir = splits.split_dir
    cache = folder_cache_dir(root)
    common = dict(
        root=root,
        stuff_classes=class_names,
        stuff_colors=colors,
        ignore_label=IGNORE_LABEL,
        resolve_mask=IdMaskCache(root, pal, cache, ignore_ids),
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
            write_folder_splits(FolderSplits([], splits.unlabeled, []), cache / "pool")
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
