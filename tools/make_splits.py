#!/usr/bin/env python
"""Write seeded semi-supervised split files in the field's format (UniMatch / SemiVL).

For a dataset whose published splits you do not have:
    python tools/make_splits.py --dataset voc [--seed 0] [--budgets 92 183] [--datasets-dir D]
writes ``<root>/splits/<name>/<n>/{labeled,unlabeled}.txt`` and ``val.txt``. Labelled sets are
nested (one seeded permutation); VOC's are drawn from the 1,464 original train images. Run the
dataset's preparation command first: the lines name the converted train-id masks.
"""
import argparse
import logging
from pathlib import Path

from hiervl.data.datasets.builtin import BUILTIN_DATASETS
from hiervl.data.datasets.semseg import datasets_root
from hiervl.data.datasets.semi_splits import write_split_files

logger = logging.getLogger("make_splits")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=sorted(BUILTIN_DATASETS))
    parser.add_argument("--datasets-dir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=None)
    parser.add_argument("--force", action="store_true", help="overwrite existing split files")
    args = parser.parse_args(argv)
    spec, lister = BUILTIN_DATASETS[args.dataset]
    root = (args.datasets_dir or datasets_root()) / spec.dirname
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found. Expected layout:\n{spec.layout}")
    split_dir = root / "splits" / spec.split_name
    if (split_dir / "val.txt").exists() and not args.force:
        raise FileExistsError(f"{split_dir} already holds splits; pass --force to overwrite")
    lines = lister(root)
    if not lines["train"]:
        raise FileNotFoundError(
            f"No training images with converted masks under {root}; run {spec.prepare_command}"
        )
    written = write_split_files(
        split_dir,
        train_lines=lines["train"],
        val_lines=lines["val"],
        labeled_pool=lines["labeled_pool"],
        budgets=args.budgets or spec.budgets,
        seed=args.seed,
    )
    for rel, count in written.items():
        logger.info("%s: %d lines", split_dir / rel, count)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
