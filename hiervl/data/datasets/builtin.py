"""The built-in real datasets: specs, split listers, and their registration."""

import os
from typing import Callable, Dict, List, Optional, Tuple

from .ade20k import ADE20K_SPEC, ade20k_split_lines
from .cityscapes import CITYSCAPES_SPEC, cityscapes_split_lines
from .coco import COCO_SPEC, coco_split_lines
from .semi_splits import SemiDatasetSpec, register_semi_dataset
from .voc import VOC_SPEC, voc_split_lines

__all__ = ["BUILTIN_DATASETS", "register_all_semi_datasets"]

# key → (spec, lister of the train / val / labelled-pool lines used by tools/make_splits.py)
BUILTIN_DATASETS: Dict[str, Tuple[SemiDatasetSpec, Callable]] = {
    "voc": (VOC_SPEC, voc_split_lines),
    "coco": (COCO_SPEC, coco_split_lines),
    "ade20k": (ADE20K_SPEC, ade20k_split_lines),
    "cityscapes": (CITYSCAPES_SPEC, cityscapes_split_lines),
}


def register_all_semi_datasets(datasets_dir: Optional[os.PathLike] = None) -> List[str]:
    """Register every split of VOC, COCO, ADE20K and Cityscapes (lazily).

    Args:
        datasets_dir: parent of the dataset roots; None = ``$DETECTRON2_DATASETS`` or the
            repository's ``datasets/``.
    """
    names = []
    for spec, _ in BUILTIN_DATASETS.values():
        root = None if datasets_dir is None else os.path.join(datasets_dir, spec.dirname)
        names += register_semi_dataset(spec, root)
    return names
