"""Dataset registration: importing this package registers the built-in dataset names."""

from . import ade20k, cityscapes, coco, demo, voc
from .builtin import BUILTIN_DATASETS, register_all_semi_datasets
from .demo import prepare_demo_dataset, register_demo
from .folder import export_demo_as_folder, register_folder, register_folder_from_cfg
from .semi_splits import SemiDatasetSpec, register_semi_dataset, write_nested_splits
from .semseg import (
    SplitFileError,
    datasets_root,
    load_semseg_split,
    read_split_file,
    register_semseg_split,
    validate_semseg_files,
    validate_semseg_sample,
    write_split_files,
)

register_demo()
register_all_semi_datasets()

__all__ = [
    "BUILTIN_DATASETS",
    "SemiDatasetSpec",
    "SplitFileError",
    "ade20k",
    "cityscapes",
    "coco",
    "register_all_semi_datasets",
    "register_semi_dataset",
    "voc",
    "write_nested_splits",
    "write_split_files",
    "datasets_root",
    "export_demo_as_folder",
    "register_folder",
    "register_folder_from_cfg",
    "demo",
    "load_semseg_split",
    "prepare_demo_dataset",
    "read_split_file",
    "register_demo",
    "register_semseg_split",
    "validate_semseg_files",
    "validate_semseg_sample",
]
