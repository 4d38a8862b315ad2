#!/usr/bin/env python
"""Supervised-only vs semi-supervised HierVL on the embedded demo dataset (not a timed test).

Both runs use the same few labelled images (``hiervl_demo_train_<n>_labeled``), the same
config (configs/demo/hiervl_demo.yaml), seed and number of steps; the semi-supervised run adds
the unlabelled rest of the training split (EMA teacher, pseudo-labels). Repeated for each of
``--seeds``; prints the val mIoU of both per seed (semi: teacher and student), their mean and
sample standard deviation, and the teacher's gain over supervised-only training.

    OMP_NUM_THREADS=1 python tools/benchmark_semi.py --labeled 8 --iters 600 --seeds 0 1 2 3 --jobs 2

``--jobs N`` runs N seeds at once, each in its own process (give each one thread, as above:
the results of a seed depend on its thread count, not on the seeds beside it). The runs train
into ``<output>/seed<N>/{supervised,semi}``; a re-run with the same ``--output`` trains over
them (``SOLVER.OVERWRITE_OUTPUT_DIR``).
"""
import argparse
import logging
import multiprocessing
import os
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, List, Optional

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


def _mean_std(values: List[float]) -> str:
    """``mean ± sample std`` (the mean alone for one value)."""
    if len(values) < 2:
        return f"{statistics.mean(values):.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def summary(results: Dict[int, Dict[str, float]]) -> List[str]:
    """Lines of the report: one per seed, then the mean ± sample std over seeds and how many
    seeds put the semi-supervised teacher ahead of supervised-only training."""
    columns = [
        ("supervised", "supervised-only"),
        ("teacher", "semi teacher"),
        ("student", "semi student"),
    ]
    present = [(k, name) for k, name in columns if any(k in r for r in results.values())]
    lines = ["seed  " + "  ".join(f"{name:>15s}" for _, name in present)]
    for seed, r in results.items():
        cells = [f"{r[k]:15.2f}" if k in r else f"{'-':>15s}" for k, _ in present]
        lines.append(f"{seed:4d}  " + "  ".join(cells))
    lines.append(
        "mean  "
        + "  ".join(
            f"{_mean_std([r[k] for r in results.values() if k in r]):>15s}" for k, _ in present
        )
    )
    paired = [r for r in results.values() if "supervised" in r and "teacher" in r]
    if paired:
        ahead = sum(r["teacher"] > r["supervised"] for r in paired)
        gain = [r["teacher"] - r["supervised"] for r in paired]
        lines.append(
            f"semi teacher - supervised: {_mean_std(gain)} mIoU; ahead in {ahead} of "
            f"{len(paired)} seeds"
        )
    return lines


def run_seed(
    config_file: str, common: List[str], output: str, seed: int, only: Optional[str]
) -> Dict[str, float]:
    """Val mIoU of one seed: ``supervised`` and / or the semi run's ``teacher`` and
    ``student``."""
    setup_logger(name="hiervl")
    setup_logger()
    out = os.path.join(output, f"seed{seed}")
    run = common + ["SEED", str(seed)]
    r: Dict[str, float] = {}
    if only != "semi":
        sup = train_and_eval(
            config_file,
            run + ["SEMI.ENABLED", "False", "OUTPUT_DIR", os.path.join(out, "supervised")],
        )
        r["supervised"] = sup["sem_seg"]
    if only != "supervised":
        semi = train_and_eval(config_file, run + ["OUTPUT_DIR", os.path.join(out, "semi")])
        r["teacher"] = semi["sem_seg"]
        if "student/sem_seg" in semi:
            r["student"] = semi["student/sem_seg"]
    return r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/demo/hiervl_demo.yaml")
    parser.add_argument("--labeled", type=int, default=8, help="labelled budget of the demo split")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="SEED of each repetition (initialisation and data order); the report gives the "
        "mean and spread over them: single runs of this tiny setting differ by several mIoU",
    )
    parser.add_argument("--output", default="output/benchmark_semi")
    parser.add_argument(
        "--only",
        choices=("supervised", "semi"),
        help="run one of the two (e.g. to try semi-supervised settings against a known baseline)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds trained at once, one process each (set OMP_NUM_THREADS to cores / jobs)",
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
        # the runs' folders are scratch (the result is benchmark.txt): a re-run trains over them
        "SOLVER.OVERWRITE_OUTPUT_DIR",
        "True",
        *args.opts,
    ]
    header = [f"labelled images: {args.labeled}, steps: {args.iters}, config: {args.config_file}"]
    if args.opts:
        header.append(f"extra opts: {' '.join(args.opts)}")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    os.makedirs(args.output, exist_ok=True)
    results: Dict[int, Dict[str, float]] = {}

    def record(seed: int, r: Dict[str, float]) -> str:
        # the report so far, after every seed: a long run that is stopped still leaves one
        results[seed] = r
        ordered = {s: results[s] for s in sorted(results)}
        report = "\n".join(header + ["val mIoU"] + summary(ordered))
        with open(os.path.join(args.output, "benchmark.txt"), "w") as f:
            f.write(report + "\n")
        logger.info("\n%s", report)
        return report

    task = (args.config_file, common, args.output)
    if args.jobs == 1:
        for seed in args.seeds:
            report = record(seed, run_seed(*task, seed, args.only))
    else:
        # fresh interpreters: a forked child would inherit the parent's torch thread pool
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_seed, *task, seed, args.only): seed for seed in args.seeds}
            for future in as_completed(futures):
                report = record(futures[future], future.result())
    print(report)  # the script's result, on stdout


if __name__ == "__main__":
    main()
