#!/usr/bin/env python
"""Supervised-only vs semi-supervised HierVL on the embedded demo dataset (not a timed test).

Both runs use the same few labelled images (``hiervl_demo_train_<n>_labeled``), the same
config (configs/demo/hiervl_demo.yaml), seed and number of steps; the semi-supervised run adds
the unlabelled rest of the training split (EMA teacher, pseudo-labels, CutMix). Prints the val
mIoU of both (semi: teacher and student).

    OMP_NUM_THREADS=2 python tools/benchmark_semi.py --labeled 8 --iters 300 --output output/bench
"""
import argparse
import logging
import os
from typing import Dict, List

from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from hiervl.config import load_config
from hiervl.engine import HierVLTrainer

logger = logging.getLogger("hiervl.benchmark_semi")


def train_and_eval(config_file: str, opts: List[str]) -> Dict[str, float]:
    cfg = load_config(config_file, opts)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(cfg.SEED)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # the evaluation hook evaluates once more after the last step; reuse its results
    results = trainer._last_eval_results
    return {k: v["mIoU"] for k, v in results.items() if isinstance(v, dict) and "mIoU" in v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/demo/hiervl_demo.yaml")
    parser.add_argument("--labeled", type=int, default=8, help="labelled budget of the demo split")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--output", default="output/benchmark_semi")
    parser.add_argument(
        "--only",
        choices=("supervised", "semi"),
        help="run one of the two (e.g. to try semi-supervised settings against a known baseline)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra config opts for both runs")
    args = parser.parse_args()
    setup_logger(name="hiervl")
    setup_logger()
    common = [
        "DATASETS.TRAIN",
        f"('hiervl_demo_train_{args.labeled}_labeled',)",
        "SEMI.UNLABELED_DATASETS",
        f"('hiervl_demo_train_{args.labeled}_unlabeled',)",
        "SOLVER.MAX_ITER",
        str(args.iters),
        "SOLVER.CHECKPOINT_PERIOD",
        str(10 * args.iters),
        *args.opts,
    ]
    lines = [f"labelled images: {args.labeled}, steps: {args.iters}, config: {args.config_file}"]
    if args.opts:
        lines.append(f"extra opts: {' '.join(args.opts)}")
    if args.only != "semi":
        sup = train_and_eval(
            args.config_file,
            common + ["SEMI.ENABLED", "False", "OUTPUT_DIR", os.path.join(args.output, "supervised")],
        )
        lines.append(f"supervised-only  val mIoU: {sup['sem_seg']:.2f}")
    if args.only != "supervised":
        semi = train_and_eval(
            args.config_file, common + ["OUTPUT_DIR", os.path.join(args.output, "semi")]
        )
        lines.append(
            f"semi-supervised  val mIoU: {semi['sem_seg']:.2f} (EMA teacher)"
            + (f", {semi['student/sem_seg']:.2f} (student)" if "student/sem_seg" in semi else "")
        )
    report = "\n".join(lines)
    with open(os.path.join(args.output, "benchmark.txt"), "w") as f:
        f.write(report + "\n")
    logger.info("\n%s", report)
    print(report)  # the script's result, on stdout


if __name__ == "__main__":
    main()
