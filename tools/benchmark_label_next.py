#!/usr/bin/env python
"""Label next, measured: k images picked by the ranking vs k picked at random (a simulation).

The ground truth of every image of the universe is known, so the labelling loop can be played
out. For each seed:

1. draw ``--labeled`` n images of the universe as the labelled set; the rest is the pool;
2. train with them (the config as it is: semi-supervised on the pool when SEMI.ENABLED);
3. rank the pool with that model's teacher (``hiervl.evaluation.label_next``, as
   ``tools/rank_unlabeled.py``) and take the top ``--add`` k; draw k of the pool at random;
4. train from scratch with the n + k labelled images of each pick (the pool minus the k stays
   unlabelled), same seed and steps;
5. report the val mIoU (teacher) of the three runs.

Printed: one row per seed, the mean and sample standard deviation over seeds, and the ranked
pick's gain over the random pick, with how many seeds it is ahead on.

    # the embedded demo (universe: its 200 training images; val: hiervl_demo_val)
    OMP_NUM_THREADS=1 python tools/benchmark_label_next.py --labeled 8 --add 8 --iters 600 \\
        --seeds 0 1 2 3 --jobs 2
    # any folder dataset: the universe is its labelled training split, val its val split
    OMP_NUM_THREADS=1 python tools/benchmark_label_next.py \\
        --config-file configs/custom/hiervl_folder.yaml --universe custom_train_labeled \\
        --labeled 20 --add 20 --iters 2000 --seeds 0 1 2 3 --jobs 2 \\
        DATASETS.CUSTOM.ROOT datasets/camvid

A seed's three results are kept in ``<output>/seed<s>/result.json``; a later invocation with the
same settings and ``--output`` reads them back instead of training again (a stopped benchmark
resumes; seeds run by separate invocations are reported together).

``--universe`` names registered splits (default: the config's DATASETS.TRAIN and
SEMI.UNLABELED_DATASETS); images without a mask are left out. ``--jobs N`` runs N seeds at once,
one process each (give each one thread, as above). Trailing ``KEY VALUE`` pairs are config opts
for every run.
"""
import argparse
import json
import logging
import multiprocessing
import os
import random
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.logger import setup_logger

import hiervl.data  # noqa: F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: F401  (registers the HierVL META_ARCH)
from hiervl.config import load_config
from hiervl.data.datasets.semseg import read_split_file, register_semseg_split
from hiervl.evaluation.label_next import labelled_class_frequency, rank_records
from hiervl.evaluation.predictor import HierVLPredictor
from hiervl.utils.atomic import atomic_write_text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchmark_semi import _ahead, _mean_std, train_and_eval  # noqa: E402

logger = logging.getLogger("hiervl.benchmark_label_next")

VARIANTS = (("initial", "initial n"), ("ranked", "n + k ranked"), ("random", "n + k random"))


def universe_records(split_names: Sequence[str]) -> List[Dict[str, str]]:
    """``file_name`` / ``sem_seg_file_name`` of every image with a mask in the splits (an
    unlabelled split's masks are read from its split file's lines), in split order, once each."""
    records: Dict[str, Dict[str, str]] = {}
    left_out = 0
    for name in split_names:
        metadata = MetadataCatalog.get(name)
        for record in DatasetCatalog.get(name):
            if "sem_seg_file_name" in record:
                records.setdefault(record["file_name"], record)
        if metadata.get("labeled", True) or not metadata.get("split_file", None):
            continue
        root = metadata.image_root
        for _, image, mask in read_split_file(metadata.split_file, labeled=False):
            path = os.path.join(root, image)
            if mask is None:
                left_out += 1
            elif path not in records:
                records[path] = {"file_name": path, "sem_seg_file_name": os.path.join(root, mask)}
    if left_out:
        logger.info("Universe: %d images without a mask left out", left_out)
    return [
        {"file_name": r["file_name"], "sem_seg_file_name": r["sem_seg_file_name"]}
        for r in records.values()
    ]


def draw(universe: Sequence[Dict], labeled: int, seed: int):
    """The initial labelled set (``labeled`` images drawn with ``seed``) and the pool."""
    if not 0 < labeled < len(universe):
        raise ValueError(f"--labeled {labeled} must be in 1..{len(universe) - 1}")
    chosen = set(random.Random(seed).sample(range(len(universe)), labeled))
    return (
        [r for i, r in enumerate(universe) if i in chosen],
        [r for i, r in enumerate(universe) if i not in chosen],
    )


def register_variant(
    name: str, labeled: Sequence[Dict], pool: Sequence[Dict], metadata: Dict, folder: str
) -> List[str]:
    """Register ``<name>_labeled`` / ``<name>_unlabeled`` from split files written to
    ``folder`` (absolute paths); returns the config opts that train on them. Names left by an
    earlier call in this process (a second benchmark in one session) are replaced."""
    os.makedirs(folder, exist_ok=True)
    for split in (f"{name}_labeled", f"{name}_unlabeled"):
        if split in DatasetCatalog.list():
            DatasetCatalog.remove(split)
            MetadataCatalog.remove(split)
    files = {"labeled": os.path.join(folder, "labeled.txt")}
    with open(files["labeled"], "w") as f:
        f.writelines(f"{r['file_name']} {r['sem_seg_file_name']}\n" for r in labeled)
    opts = ["DATASETS.TRAIN", f"('{name}_labeled',)"]
    register_semseg_split(f"{name}_labeled", root="/", split_file=files["labeled"], **metadata)
    if pool:
        files["unlabeled"] = os.path.join(folder, "unlabeled.txt")
        with open(files["unlabeled"], "w") as f:
            f.writelines(f"{r['file_name']}\n" for r in pool)
        register_semseg_split(
            f"{name}_unlabeled",
            root="/",
            split_file=files["unlabeled"],
            labeled=False,
            **metadata,
        )
        opts += ["SEMI.UNLABELED_DATASETS", f"('{name}_unlabeled',)"]
    return opts


def run_seed(
    config_file: str,
    common: List[str],
    universe: List[Dict],
    settings: Dict,
    seed: int,
) -> Dict[str, float]:
    """Val mIoU (the teacher's when semi-supervised) of the three runs of one seed."""
    if multiprocessing.current_process().name != "MainProcess":
        # a spawned --jobs worker: its loggers start unconfigured
        setup_logger(name="hiervl")
        setup_logger()
    out = os.path.join(settings["output"], f"seed{seed}")
    metadata = settings["metadata"]
    run = common + ["SEED", str(seed)]
    # A seed whose three runs finished with these very settings is read back, not retrained:
    # a stopped benchmark resumes, and seeds run by separate invocations into one --output
    # are reported together.
    done = os.path.join(out, "result.json")
    scored = ("labeled", "add", "uncertainty", "balance_weight", "diversity_weight")
    key = {"config_file": config_file, "opts": run, **{k: settings[k] for k in scored}}
    if os.path.isfile(done):
        with open(done) as f:
            saved = json.load(f)
        if saved.get("settings") == key:
            logger.info(
                "seed %d: the runs in %s are done; read back (delete it to retrain)", seed, out
            )
            return saved["results"]
        logger.info("seed %d: %s holds runs of other settings; training again", seed, out)
    labeled, pool = draw(universe, settings["labeled"], seed)
    add = settings["add"]
    if add > len(pool):
        raise ValueError(f"--add {add} but the pool holds {len(pool)} images")

    def train(variant: str, labeled_set, pool_set) -> float:
        name = f"label_next_{settings['tag']}_s{seed}_{variant}"
        folder = os.path.join(out, variant)
        opts = register_variant(name, labeled_set, pool_set, metadata, folder)
        opts = run + opts + ["OUTPUT_DIR", folder]
        return train_and_eval(config_file, opts)["sem_seg"], opts

    results: Dict[str, float] = {}
    results["initial"], initial_opts = train("initial", labeled, pool)
    cfg = load_config(
        config_file,
        initial_opts + ["MODEL.WEIGHTS", os.path.join(out, "initial", "model_final.pth")],
    )
    predictor = HierVLPredictor(cfg)
    frequency = labelled_class_frequency(
        labeled, len(metadata["stuff_classes"]), ignore_label=metadata["ignore_label"]
    )
    ranking = rank_records(
        predictor,
        [r["file_name"] for r in pool],
        kind=settings["uncertainty"],
        balance_weight=settings["balance_weight"],
        diversity_weight=settings["diversity_weight"],
        num_select=add,
        labelled_frequency=frequency,
        progress=False,
    )
    del predictor
    ranked = {r.name for r in ranking[:add]}
    shuffled = list(range(len(pool)))
    random.Random(f"random pick {seed}").shuffle(shuffled)
    drawn = {pool[i]["file_name"] for i in shuffled[:add]}
    for variant, picked in (("ranked", ranked), ("random", drawn)):
        with open(os.path.join(out, f"picked_{variant}.txt"), "w") as f:
            f.writelines(f"{p}\n" for p in sorted(picked))
        results[variant], _ = train(
            variant,
            labeled + [r for r in pool if r["file_name"] in picked],
            [r for r in pool if r["file_name"] not in picked],
        )
    atomic_write_text(done, json.dumps({"settings": key, "results": results}, indent=1) + "\n")
    return results


def summary(results: Dict[int, Dict[str, float]]) -> List[str]:
    """Lines of the report: one per seed, the mean ± sample std over seeds, and the ranked
    pick's gain over the random one with the number of seeds it is ahead on."""
    present = [(k, name) for k, name in VARIANTS if any(k in r for r in results.values())]
    lines = ["seed  " + "  ".join(f"{name:>14s}" for _, name in present)]
    for seed, r in results.items():
        cells = [f"{r[k]:14.2f}" if k in r else f"{'-':>14s}" for k, _ in present]
        lines.append(f"{seed:4d}  " + "  ".join(cells))
    lines.append(
        "mean  "
        + "  ".join(
            f"{_mean_std([r[k] for r in results.values() if k in r]):>14s}" for k, _ in present
        )
    )
    paired = [r for r in results.values() if "ranked" in r and "random" in r]
    if paired:
        ahead = sum(_ahead(r["ranked"], r["random"]) for r in paired)
        gain = [r["ranked"] - r["random"] for r in paired]
        lines.append(
            f"ranked - random: {_mean_std(gain)} mIoU; ahead in {ahead} of {len(paired)} seeds"
        )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", default="configs/demo/hiervl_demo.yaml")
    parser.add_argument("--labeled", type=int, default=8, help="initial labelled images n")
    parser.add_argument("--add", type=int, default=8, help="images k added by each pick")
    parser.add_argument("--iters", type=int, default=600, help="training steps of every run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="SEED of each repetition")
    parser.add_argument(
        "--universe",
        nargs="+",
        default=None,
        help="registered splits whose images (with masks) are drawn from "
        "(default: DATASETS.TRAIN and SEMI.UNLABELED_DATASETS of the config)",
    )
    parser.add_argument("--val", default="", help="val split (default: DATASETS.TEST[0])")
    parser.add_argument("--uncertainty", choices=("entropy", "margin"), default="entropy")
    parser.add_argument("--balance-weight", type=float, default=0.5)
    parser.add_argument("--diversity-weight", type=float, default=0.5)
    parser.add_argument("--output", default="output/benchmark_label_next")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds run at once, one process each (set OMP_NUM_THREADS to cores / jobs)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra config opts for all runs")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    cfg = load_config(args.config_file, args.opts)
    splits = args.universe or list(cfg.DATASETS.TRAIN) + list(cfg.SEMI.UNLABELED_DATASETS)
    val = args.val or cfg.DATASETS.TEST[0]
    universe = universe_records(splits)
    source = MetadataCatalog.get(splits[0])
    metadata = {
        "stuff_classes": list(source.stuff_classes),
        "stuff_colors": list(source.stuff_colors),
        "ignore_label": source.get("ignore_label", 255),
        "class_descriptions": source.get("class_descriptions", None),
    }
    common = [
        "SOLVER.MAX_ITER",
        str(args.iters),
        "SOLVER.CHECKPOINT_PERIOD",
        str(10 * args.iters),
        "DATASETS.TEST",
        f"('{val}',)",
        *args.opts,
    ]
    settings = {
        "output": args.output,
        "labeled": args.labeled,
        "add": args.add,
        "metadata": metadata,
        # part of the registered split names (which go into config opts as Python literals)
        "tag": re.sub(r"\W", "_", os.path.basename(os.path.normpath(args.output))),
        "uncertainty": args.uncertainty,
        "balance_weight": args.balance_weight,
        "diversity_weight": args.diversity_weight,
    }
    header = [
        f"universe: {', '.join(splits)} ({len(universe)} images), val: {val}, config: "
        f"{args.config_file}",
        f"n = {args.labeled} labelled, k = {args.add} added, {args.iters} steps per run; score: "
        f"{args.uncertainty}, balance {args.balance_weight}, diversity {args.diversity_weight}",
    ]
    if args.opts:
        header.append(f"extra opts: {' '.join(args.opts)}")
    os.makedirs(args.output, exist_ok=True)
    results: Dict[int, Dict[str, float]] = {}
    report = ""

    def record(seed: int, r: Dict[str, float]) -> str:
        # the report so far, after every seed: a long run that is stopped still leaves one
        results[seed] = r
        ordered = {s: results[s] for s in sorted(results)}
        text = "\n".join(header + ["val mIoU"] + summary(ordered))
        with open(os.path.join(args.output, "benchmark.txt"), "w") as f:
            f.write(text + "\n")
        logger.info("\n%s", text)
        return text

    task = (args.config_file, common, universe, settings)
    if args.jobs == 1:
        for seed in args.seeds:
            report = record(seed, run_seed(*task, seed))
    else:
        # fresh interpreters: a forked child would inherit the parent's torch thread pool
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = {pool.submit(run_seed, *task, seed): seed for seed in args.seeds}
            for future in as_completed(futures):
                report = record(futures[future], future.result())
    print(report)  # the script's result, on stdout
    return report


if __name__ == "__main__":
    setup_logger(name="hiervl")
    setup_logger()
    main()
