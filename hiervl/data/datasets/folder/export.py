"""The embedded demo dataset written as a folder dataset (same dataset dicts and metadata)."""

import os
import shutil
from pathlib import Path
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog

from .splits import FolderSplits, write_folder_splits

__all__ = ["export_demo_as_folder"]


def export_demo_as_folder(dest: os.PathLike) -> Path:
    """Write the embedded demo dataset (default budget) as a folder dataset.

    ``images/`` and ``masks/`` keep the demo's relative paths (so image ids are unchanged);
    unlabelled images get no mask; ``classes.txt`` carries the class descriptions,
    ``palette.txt`` the demo colours, and ``splits/`` the demo's exact split membership and
    order. Registering the result with ``palette="palette.txt"`` gives the same dataset dicts
    (modulo the root) and metadata as ``hiervl_demo_*``.

    Args:
        dest: the folder to create (may exist; files are overwritten).

    Returns:
        ``dest``.
    """
    dest = Path(dest)
    meta = MetadataCatalog.get("hiervl_demo_train_labeled")
    split_names = {
        "labeled.txt": "hiervl_demo_train_labeled",
        "unlabeled.txt": "hiervl_demo_train_unlabeled",
        "val.txt": "hiervl_demo_val",
    }
    splits: Dict[str, List] = {}
    for file_name, dataset_name in split_names.items():
        source = Path(MetadataCatalog.get(dataset_name).image_root)
        entries = []
        for record in DatasetCatalog.get(dataset_name):
            rels = [Path(record["file_name"]).relative_to(source).as_posix()]
            if "sem_seg_file_name" in record:
                rels.append(Path(record["sem_seg_file_name"]).relative_to(source).as_posix())
            for rel in rels:
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / rel, dest / rel)
            entries.append(tuple(rels) if len(rels) == 2 else rels[0])
        splits[file_name] = entries
    lines = ["\t".join([n] + list(d)) for n, d in zip(meta.stuff_classes, meta.class_descriptions)]
    (dest / "classes.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (dest / "palette.txt").write_text(
        "".join(f"{r} {g} {b}\n" for r, g, b in meta.stuff_colors), encoding="utf-8"
    )
    write_folder_splits(
        FolderSplits(splits["labeled.txt"], splits["unlabeled.txt"], splits["val.txt"]),
        dest / "splits",
    )
    return dest
