"""Your own data: a folder of images, some masks and a class list, registered without code.

Layout of a folder dataset (``ROOT``)::

    images/     RGB images (.jpg .jpeg .png .bmp), sub-folders allowed
    masks/      one PNG per labelled image, same relative path and stem as its image:
                single-channel class ids (255 = ignore), or colour PNGs plus a palette file
    classes.txt one class name per line, line i = class id i; optional TAB-separated
                descriptions after the name (dataset-aware prompts); optionally, after the
                class names, ``ignore: 11`` lines naming mask ids that mean "ignore"
    splits/     optional: labeled.txt, val.txt (both or neither) and unlabeled.txt, one
                ``image [mask]`` line per sample, paths relative to ROOT (the field's format)

Images without a mask form the unlabelled pool. Without split files the labelled images are
split into train / val by a seeded draw, and the split files are WRITTEN (to ``ROOT/splits`` or,
when the folder is read-only, to the cache) so that every run sees the same, visible split.

Masks that are not 8-bit single-channel PNGs (colour masks, palette-mode, 16-bit) are converted
once into id PNGs under the cache (``$HIERVL_CACHE_DIR`` or ``~/.cache/hiervl``), because the
evaluator reads ``sem_seg_file_name`` directly. The palette file holds one ``R G B`` or
``#rrggbb`` line per class in class-id order; extra lines ending in the word ``ignore`` name
colours mapped to 255. Id masks whose "ignore" value is not 255 (CamVid's void 11) declare it
in classes.txt (``ignore: 11``); those masks are converted the same way, the declared ids
becoming 255, so that training, pseudo-labels and evaluation all see one ignore label.

Registered names: ``<NAME>_train_labeled``, ``<NAME>_train_unlabeled``, ``<NAME>_val``, all
through :func:`~hiervl.data.datasets.semseg.register_semseg_split`.

One job per module: :mod:`.classes` (``classes.txt``: names, descriptions, ``ignore:`` ids),
:mod:`.palette` (palette files, distinct colours), :mod:`.scan` (images paired with masks by
stem; the folder's cache), :mod:`.splits` (split files read, drawn, checked, refreshed,
written), :mod:`.masks` (masks converted to id PNGs in the cache), :mod:`.register` (the three
dataset names; the config's ``DATASETS.CUSTOM``) and :mod:`.export` (the demo as a folder).
The names below are importable from ``hiervl.data.datasets.folder`` itself.
"""

from .classes import (
    IGNORE_LABEL,
    TEXT_ENCODING,
    FolderDatasetError,
    parse_classes,
    parse_ignore_ids,
    read_classes,
    read_ignore_ids,
)
from .export import export_demo_as_folder
from .masks import IdMaskCache, mask_to_ids
from .palette import Palette, distinct_colors, parse_palette, read_palette, resolve_palette_path
from .register import FolderDataset, register_folder, register_folder_from_cfg
from .scan import IMAGE_EXTENSIONS, FolderScan, folder_cache_dir, scan_folder
from .splits import (
    FolderSplits,
    StaleSplits,
    find_split_dir,
    find_stale_splits,
    load_or_create_splits,
    make_splits,
    read_folder_splits,
    refresh_splits,
    write_folder_splits,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "IGNORE_LABEL",
    "TEXT_ENCODING",
    "FolderDatasetError",
    "Palette",
    "FolderScan",
    "FolderSplits",
    "FolderDataset",
    "IdMaskCache",
    "parse_classes",
    "read_classes",
    "parse_ignore_ids",
    "read_ignore_ids",
    "parse_palette",
    "read_palette",
    "distinct_colors",
    "mask_to_ids",
    "scan_folder",
    "find_split_dir",
    "read_folder_splits",
    "make_splits",
    "write_folder_splits",
    "load_or_create_splits",
    "StaleSplits",
    "find_stale_splits",
    "refresh_splits",
    "folder_cache_dir",
    "resolve_palette_path",
    "register_folder",
    "register_folder_from_cfg",
    "export_demo_as_folder",
]
