"""HierVL: semi-supervised semantic segmentation with hierarchical vision-language anchors."""
from .config import add_hiervl_config

__all__ = ["add_hiervl_config"]
