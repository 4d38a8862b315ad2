"""Registry of dataset mappers."""

from typing import Callable, Optional

from detectron2.config import CfgNode
from detectron2.utils.registry import Registry

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """
Registry of dataset mapper builders. A registered object is a function
``name(cfg, is_train: bool) -> mapper``; the function's name is the registry key used by
``INPUT.DATASET_MAPPER_NAME`` (labelled loader and evaluation) and ``SEMI.DATASET_MAPPER_NAME``
(unlabelled loader). A mapper is a callable ``mapper(dataset_dict, rng=None) -> dict``; ``rng``
(a ``numpy.random.Generator``) makes its randomness reproducible per sample.
"""


def build_dataset_mapper(
    cfg: CfgNode, name: Optional[str] = None, is_train: bool = True
) -> Callable:
    """Build the mapper registered as ``name`` (default ``cfg.INPUT.DATASET_MAPPER_NAME``)."""
    name = cfg.INPUT.DATASET_MAPPER_NAME if name is None else name
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train)
