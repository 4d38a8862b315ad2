"""Dataset mappers: labelled, weak and strong views of semantic segmentation samples.

Every mapper is ``@configurable``, deep-copies its input dict, and is looked up by name in
:data:`DATASET_MAPPER_REGISTRY` (``INPUT.DATASET_MAPPER_NAME`` for the labelled loader,
``SEMI.DATASET_MAPPER_NAME`` for the unlabelled one).
"""

from .augment import (
    apply_photometric,
    crop_params,
    random_photometric_params,
    resize_pad_crop,
)
from .build import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from .semantic_labeled import SemanticLabeledMapper
from .semantic_unlabeled import SemanticUnlabeledMapper

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "SemanticLabeledMapper",
    "SemanticUnlabeledMapper",
    "apply_photometric",
    "build_dataset_mapper",
    "crop_params",
    "random_photometric_params",
    "resize_pad_crop",
]
