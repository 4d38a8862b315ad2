"""HierVL: semi-supervised semantic segmentation with hierarchical vision-language anchors.

Importing the package registers its datasets (``hiervl.data``) and model parts, including the
``HierVL`` META_ARCH, in detectron2's catalogs and registries.
"""

from . import data  # noqa: F401  (registers the built-in datasets)
from .config import add_hiervl_config, load_config
from .hiervl_model import HierVL

__all__ = ["HierVL", "add_hiervl_config", "load_config"]
