#!/usr/bin/env python
"""Write seeded semi-supervised split files in the field's format (UniMatch / SemiVL).

For a dataset whose published splits you do not have:
    python tools/make_splits.py --dataset voc [--seed 0] [--budgets 92 183] [--datasets-dir D]
        [--splits val]
writes ``<root>/splits/<name>/<n>/{labeled,unlabeled}.txt`` and ``val.txt``. Labelled sets are
nested (one seeded permutation); VOC's are drawn from the 1,464 original train images. Run the
dataset's preparation command first: the lines name the converted train-id masks. Each split
(``train``: the budget folders, ``val``: ``val.txt``) is written when its images and masks are
there; a missing one is named in a warning (``--splits``: named splits must be present).

For a folder dataset (docs/CUSTOM_DATA.md) whose split files predate images or masks added
since:
    python tools/make_splits.py --folder /path/to/folder
adds the new images to the split files in place (with a mask: ``labeled.txt``, also when the
image was listed in ``unlabeled.txt``; without: ``unlabeled.txt``) and leaves ``val.txt`` and
every listed image where they are. Without split files it draws and writes them as training
would (``--val-fraction``, ``--seed``).
"""
import argparse
import logging
from pathlib import Path
from typing import Dict, List, Optional

from hiervl.data.datasets import folder
from hiervl.data.datasets.builtin import BUILTIN_DATASETS
from hiervl.data.datasets.preparation import add_splits_argument, select_splits
from hiervl.data.datasets.semi_splits import SemiDatasetSpec, write_nested_splits
from hiervl.data.datasets.semseg import datasets_root

logger = logging.getLogger("make_splits")

SPLITS = ("train", "val")


def _missing_reason(
    spec: SemiDatasetSpec, root: Path, split: str, lines: Optional[List[str]]
) -> Optional[str]:
    """None when ``split`` has lines whose images and masks exist, else what is missing."""
    if not lines:
        return (
            f"no {split} images (with their converted masks) found under {root}; expected "
            f"layout:\n{spec.layout}"
        )
    absent = {}
    for line in lines:
        for kind, rel in zip(("image", "mask"), line.split()):
            if not (root / rel).is_file():
                absent.setdefault(kind, []).append(rel)
    if "image" in absent:
        return (
            f"{len(absent['image'])} of {len(lines)} {split} images not found, e.g. "
            f"{root / absent['image'][0]}"
        )
    if "mask" in absent:
        return (
            f"{len(absent['mask'])} of {len(lines)} {split} masks not found, e.g. "
            f"{root / absent['mask'][0]}: convert them with {spec.prepare_command}"
        )
    return None


def make_dataset_splits(args: argparse.Namespace) -> int:
    spec, lister = BUILTIN_DATASETS[args.dataset]
    root = (args.datasets_dir or datasets_root()) / spec.dirname
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found. Expected layout:\n{spec.layout}")
    split_dir = root / "splits" / spec.split_name
    lines = lister(root)
    missing = {s: _missing_reason(spec, root, s, lines[s]) for s in SPLITS}
    splits = select_splits(missing, args.splits, dataset=spec.key)
    budgets = args.budgets or spec.budgets
    existing = {
        "val": [split_dir / "val.txt"],
        "train": [split_dir / str(n) / "labeled.txt" for n in budgets],
    }
    clash = [p for s in splits for p in existing[s] if p.exists()]
    if clash and not args.force:
        raise FileExistsError(
            f"{split_dir} already holds split files ({', '.join(str(p) for p in clash[:3])}); "
            f"pass --force to overwrite"
        )
    written = write_nested_splits(
        split_dir,
        train_lines=lines["train"] if "train" in splits else None,
        val_lines=lines["val"] if "val" in splits else None,
        labeled_pool=lines["labeled_pool"],
        budgets=budgets,
        seed=args.seed,
    )
    for rel, count in written.items():
        logger.info("%s: %d lines", split_dir / rel, count)
    return 0


def refresh_folder_splits(args: argparse.Namespace) -> int:
    root = args.folder.expanduser().resolve()
    scan = folder.scan_folder(root)
    split_dir = folder.find_split_dir(root)
    if split_dir is None:
        folder.load_or_create_splits(root, val_fraction=args.val_fraction, seed=args.seed)
        return 0
    splits = folder.read_folder_splits(split_dir, scan)
    stale = folder.find_stale_splits(scan, splits)
    if not stale:
        logger.info("%s: the split files in %s list every image; nothing to add", root, split_dir)
        return 0
    refreshed = folder.refresh_splits(scan, splits)
    unlabeled_file = split_dir / "unlabeled.txt"
    if not unlabeled_file.is_file():
        # Without unlabeled.txt the pool is every image without a mask: keep it that way.
        refreshed.unlabeled = []
    elif not refreshed.unlabeled:
        unlabeled_file.unlink()  # every listed image has a mask now: an empty file is an error
    folder.write_folder_splits(refreshed, split_dir)
    counts: Dict[str, int] = {
        "labeled.txt": len(stale.new_labeled) + len(stale.now_labeled),
        "unlabeled.txt": len(stale.new_unlabeled),
    }
    logger.info(
        "%s: added %d image(s) to labeled.txt (%d of them moved from unlabeled.txt) and %d to "
        "unlabeled.txt in %s; val.txt unchanged",
        root,
        counts["labeled.txt"],
        len(stale.now_labeled),
        counts["unlabeled.txt"],
        split_dir,
    )
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", choices=sorted(BUILTIN_DATASETS))
    which.add_argument("--folder", type=Path, help="a folder dataset: add new images to splits/")
    parser.add_argument("--datasets-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=None)
    parser.add_argument("--force", action="store_true", help="overwrite existing split files")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="--folder without split files: DATASETS.CUSTOM.VAL_FRACTION of the drawn split",
    )
    add_splits_argument(parser, SPLITS)
    args = parser.parse_args(argv)
    if args.folder is not None:
        return refresh_folder_splits(args)
    return make_dataset_splits(args)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
