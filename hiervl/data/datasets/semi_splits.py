"""Semi-supervised splits of the real datasets: split files, registration, clear errors.

A dataset lives in ``$DETECTRON2_DATASETS/<dirname>`` (see ``datasets/README.md``); its split
files follow the field (UniMatch, SemiVL): ``<root>/splits/<split_name>/<n>/labeled.txt`` and
``unlabeled.txt`` for every labelled budget ``n``, and ``<root>/splits/<split_name>/val.txt``.
Published splits are read as they are (their folders may be named by fraction, e.g. COCO's
``1_512`` for 232 images); ``tools/make_splits.py`` writes seeded splits in the same format
when none are published.
"""

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .class_descriptions import builtin_descriptions_file
from .semseg import (
    MaskResolver,
    datasets_root,
    read_split_file,
    register_semseg_split,
    write_split_files,
)

logger = logging.getLogger(__name__)

__all__ = ["SemiDatasetSpec", "register_semi_dataset", "split_file_path", "write_nested_splits"]


@dataclass(frozen=True)
class SemiDatasetSpec:
    """What registration and split generation need to know about one dataset.

    Attributes:
        key: short name used by the tools (``voc``, ``coco``, ``ade20k``, ``cityscapes``).
        prefix: dataset-name prefix, e.g. ``voc_sem_seg`` → ``voc_sem_seg_train_92_labeled``.
        dirname: the dataset's root relative to ``$DETECTRON2_DATASETS``.
        split_name: folder under ``<root>/splits/`` (the field's name, e.g. ``pascal``).
        budgets: labelled-image budgets of the paper.
        stuff_classes / stuff_colors: class names and RGB colours, index = train id.
        layout: the expected directory layout, shown when something is missing.
        prepare_command: the command that converts raw labels to train-id masks.
        required_dirs: directories (relative to root) that preparation creates.
        split_aliases: published folder names of budgets, e.g. ``{232: "1_512"}``.
        mask_resolver: builds the mask-path mapping from the root (None = paths as written).
    """

    key: str
    prefix: str
    dirname: str
    split_name: str
    budgets: Tuple[int, ...]
    stuff_classes: Tuple[str, ...]
    stuff_colors: Tuple[Tuple[int, int, int], ...]
    layout: str
    prepare_command: str
    required_dirs: Tuple[str, ...] = ()
    split_aliases: Dict[int, str] = field(default_factory=dict)
    mask_resolver: Optional[Callable[[Path], Optional[MaskResolver]]] = None

    def dataset_names(self) -> List[str]:
        """Every registered name: labelled / unlabelled per budget, then val."""
        names = []
        for n in self.budgets:
            names += [f"{self.prefix}_train_{n}_labeled", f"{self.prefix}_train_{n}_unlabeled"]
        return names + [f"{self.prefix}_val"]


def split_file_path(spec: SemiDatasetSpec, root: Path, budget: Optional[int], kind: str) -> Path:
    """Path of a split file: ``val.txt`` when ``budget`` is None, else ``<n>/<kind>.txt``.

    The folder named by the count wins; a published folder named by fraction is used when
    only it exists.
    """
    base = Path(root) / "splits" / spec.split_name
    if budget is None:
        return base / "val.txt"
    by_count = base / str(budget) / f"{kind}.txt"
    alias = spec.split_aliases.get(budget)
    if not by_count.is_file() and alias and (base / alias / f"{kind}.txt").is_file():
        return base / alias / f"{kind}.txt"
    return by_count


def check_dataset(spec: SemiDatasetSpec, root: Path, split_file: Path) -> None:
    """Raise ``FileNotFoundError`` naming the layout and the fix when data is missing."""
    make_splits = f"python tools/make_splits.py --dataset {spec.key}"
    if not root.is_dir():
        raise FileNotFoundError(
            f"Dataset root {root} not found (set DETECTRON2_DATASETS; now {datasets_root()}).\n"
            f"Expected layout:\n{spec.layout}\n"
            f"then run: {spec.prepare_command}\nand, without published splits: {make_splits}"
        )
    for rel in spec.required_dirs:
        if not (root / rel).is_dir():
            raise FileNotFoundError(
                f"{root / rel} not found: convert the raw labels to train ids with\n"
                f"  {spec.prepare_command}\nExpected layout:\n{spec.layout}"
            )
    if not split_file.is_file():
        raise FileNotFoundError(
            f"Split file {split_file} not found. Put the published split files under "
            f"{root / 'splits' / spec.split_name}/ or generate seeded ones with\n  {make_splits}"
        )
    first = read_split_file(split_file, labeled=False)[0]
    if first[2] is not None:
        resolver = spec.mask_resolver(root) if spec.mask_resolver else None
        mask = root / (resolver(first[2]) if resolver else first[2])
        if not mask.is_file():
            raise FileNotFoundError(
                f"{split_file}:{first[0]}: mask {mask} not found; convert the raw labels to "
                f"train ids with\n  {spec.prepare_command}"
            )


def register_semi_dataset(
    spec: SemiDatasetSpec, root: Optional[os.PathLike] = None, prefix: Optional[str] = None
) -> List[str]:
    """Register every split of ``spec`` lazily (nothing is read until ``DatasetCatalog.get``).

    Args:
        spec: the dataset.
        root: dataset root; None = ``datasets_root() / spec.dirname``.
        prefix: name prefix; None = ``spec.prefix``.

    Returns:
        the registered names.
    """
    root = Path(root) if root is not None else datasets_root() / spec.dirname
    prefix = prefix or spec.prefix
    entries = [(f"{prefix}_val", None, "val", True)]
    for n in spec.budgets:
        entries.append((f"{prefix}_train_{n}_labeled", n, "labeled", True))
        entries.append((f"{prefix}_train_{n}_unlabeled", n, "unlabeled", False))
    # The shipped class descriptions (read only when MODEL.HIERVL.CLIP.DATASET_DESCRIPTIONS).
    descriptions = builtin_descriptions_file(spec.key)
    extra = {"class_descriptions_file": str(descriptions)} if descriptions else {}
    names = []
    for name, budget, kind, labeled in entries:
        if name in DatasetCatalog.list():
            # detectron2 itself registers ``ade20k_sem_seg_val``; ours reads the same files.
            logger.debug("Replacing the registered dataset %s", name)
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)

        def _locate(budget=budget, kind=kind) -> Path:
            return split_file_path(spec, root, budget, kind)

        def _prepare(locate=_locate) -> None:
            check_dataset(spec, root, locate())

        register_semseg_split(
            name,
            root=root,
            split_file=_LazyPath(_locate),
            stuff_classes=spec.stuff_classes,
            stuff_colors=spec.stuff_colors,
            labeled=labeled,
            prepare=_prepare,
            resolve_mask=_LazyResolver(spec, root),
            **extra,
        )
        names.append(name)
    return names


class _LazyPath(os.PathLike):
    """A path decided when it is used (published fraction folder vs. generated count folder)."""

    def __init__(self, locate: Callable[[], Path]):
        self._locate = locate

    def __fspath__(self) -> str:
        return str(self._locate())

    def __str__(self) -> str:
        return self.__fspath__()


class _LazyResolver:
    """The spec's mask resolver, built from the root on first use."""

    def __init__(self, spec: SemiDatasetSpec, root: Path):
        self._spec, self._root, self._fn, self._built = spec, root, None, False

    def __call__(self, mask_rel: str) -> str:
        if not self._built:
            maker = self._spec.mask_resolver
            self._fn, self._built = (maker(self._root) if maker else None), True
        return self._fn(mask_rel) if self._fn is not None else mask_rel


def write_nested_splits(
    split_dir: os.PathLike,
    *,
    train_lines: Optional[Sequence[str]],
    val_lines: Optional[Sequence[str]],
    budgets: Sequence[int],
    seed: int,
    labeled_pool: Optional[Sequence[str]] = None,
) -> Dict[str, int]:
    """Draw seeded, nested splits and write them in the field's format
    (:func:`~hiervl.data.datasets.semseg.write_split_files`).

    One seeded permutation of the labelled pool gives every budget its first ``n`` lines, so
    smaller labelled sets are subsets of larger ones; ``unlabeled.txt`` holds the rest of
    ``train_lines``.

    Args:
        split_dir: ``<root>/splits/<split_name>``.
        train_lines: ``image mask`` lines of the whole training set (sorted by the caller);
            None writes no budget folder (e.g. only the validation half is downloaded).
        val_lines: lines of ``val.txt``; None writes no ``val.txt``.
        budgets: labelled budgets.
        seed: seed of the permutation.
        labeled_pool: lines labelled images are drawn from (VOC: the 1,464 originals);
            None = ``train_lines``.

    Returns:
        ``{"<n>/labeled.txt": count, ...}`` of what was written.
    """
    files: Dict[str, List[str]] = {}
    if val_lines is not None:
        files["val.txt"] = list(val_lines)
    if train_lines is not None:
        pool = list(labeled_pool if labeled_pool is not None else train_lines)
        train_set = set(train_lines)
        missing = [line for line in pool if line not in train_set]
        if missing:
            raise ValueError(f"{len(missing)} labelled-pool lines are not in the training set")
        too_big = [n for n in budgets if n > len(pool)]
        if too_big:
            raise ValueError(f"Budgets {too_big} exceed the {len(pool)} candidate labelled images")
        order = np.random.default_rng(seed).permutation(len(pool))
        for n in budgets:
            chosen = {pool[i] for i in order[:n]}
            files[f"{n}/labeled.txt"] = [line for line in pool if line in chosen]
            files[f"{n}/unlabeled.txt"] = [line for line in train_lines if line not in chosen]
    write_split_files(split_dir, files)
    return {name: len(lines) for name, lines in files.items()}
