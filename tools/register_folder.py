#!/usr/bin/env python
"""Register a folder dataset and print its dataset names, class list and split sizes.

Usage::

    python tools/register_folder.py /path/to/folder [--name custom] [--palette palette.txt]
        [--val-fraction 0.1] [--seed 0] [--no-write-splits] [--load]

Without split files the labelled images are split into train / val (seeded) and the split
files are written to ``/path/to/folder/splits`` (the cache when the folder is read-only), unless
``--no-write-splits``. ``--load`` also reads every split through ``DatasetCatalog`` (this
converts colour masks into the cache once). The same registration runs in ``train_net.py``
from ``DATASETS.CUSTOM.*``.
"""
import argparse
import logging
import sys
from typing import Optional, Sequence

from detectron2.data import DatasetCatalog

from hiervl.data.datasets.folder import FolderDatasetError, register_folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="folder with images/, masks/, classes.txt")
    parser.add_argument("--name", default="custom", help="DATASETS.CUSTOM.NAME")
    parser.add_argument("--palette", default="", help="DATASETS.CUSTOM.PALETTE")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="VAL_FRACTION")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val draw")
    parser.add_argument(
        "--no-write-splits", action="store_true", help="do not write a drawn split to disk"
    )
    parser.add_argument("--load", action="store_true", help="load every split (converts masks)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        info = register_folder(
            args.root,
            name=args.name,
            palette=args.palette,
            val_fraction=args.val_fraction,
            seed=args.seed,
            write_splits=not args.no_write_splits,
        )
        if args.load:
            for key, name in info.names.items():
                if info.counts[key]:
                    DatasetCatalog.get(name)
    except FolderDatasetError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    print(f"folder: {info.root}")
    print(f"classes ({info.num_classes}): {', '.join(info.class_names)}")
    print(f"split files: {info.split_dir}")
    for key, name in info.names.items():
        print(f"{name}: {info.counts[key]} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
