#!/usr/bin/env python
"""Supervised-only vs semi-supervised HierVL over labelled budgets and seeds (not a timed test).

For each labelled budget and each seed, both runs use the same labelled images, the same config,
seed and number of steps; the semi-supervised run adds the unlabelled images (EMA teacher,
pseudo-labels). The report gives, per budget, the val mIoU of both per seed (semi: teacher and
student), their mean and sample standard deviation, the teacher's gain over supervised-only
training, the headroom (supervised-only with the largest budget minus supervised-only with this
one: what more labels bring) and the share of the headroom the unlabelled images recover; a
plot (PNG) shows val mIoU against the number of labelled images, both methods, with error bars.

Data, one of:

- ``--folder PATH``: a folder dataset (docs/CUSTOM_DATA.md; default config
  configs/custom/hiervl_folder_cpu.yaml). Its labelled training split is the pool: for each
  seed one permutation of it is drawn, the first ``n`` images are the labelled set of budget
  ``n`` (nested: the 10 are among the 20), and the rest of the pool plus the folder's own
  unlabelled images are the unlabelled set. ``all`` = the whole pool (semi-supervised only when
  the folder has unlabelled images). Evaluation on the folder's val split.
- ``--pool LABELED [UNLABELED ...]``: registered dataset names with ``--config-file`` (e.g.
  ``voc_sem_seg_train_1464_labeled``), drawn the same way; evaluation on the config's
  ``DATASETS.TEST``.
- neither: the embedded demo's fixed splits ``hiervl_demo_train_<n>_{labeled,unlabeled}``
  (``--labeled 8`` or ``16``), the same labelled images for every seed.

    OMP_NUM_THREADS=1 python tools/benchmark_semi.py --labeled 8 --iters 600 --seeds 0 1 2 3 --jobs 2
    OMP_NUM_THREADS=1 python tools/benchmark_semi.py --folder /path/to/camvid \\
        --labeled 10 20 40 all --seeds 0 1 2 3 --jobs 2 --output output/benchmark_camvid

``--jobs N`` runs N trainings at once, each in its own process (give each one thread, as
above: the results of a run depend on its thread count, not on the runs beside it). The
report, ``results.json`` (every run's metrics, per-class IoU included) and the plot are
rewritten after every finished run, so a long benchmark that is stopped still leaves them. The
runs train into ``<output>/labeled_<budget>/seed<N>/{supervised,semi}``; a re-run with the same
``--output`` trains over them (``SOLVER.OVERWRITE_OUTPUT_DIR``).

``--merge OUT1 OUT2 ... --output OUT`` trains nothing: it reports over finished benchmarks
(their ``--output`` folders or ``results.json`` files; ``PATH:supervised`` or ``PATH:semi``
takes only that method's runs of one), e.g. seeds or methods run as separate
commands or on several machines, and writes the combined report, ``results.json`` and plot to
``--output``. The runs must share data, config and steps; the supervised-only runs and the
semi-supervised ones may differ only in ``SEMI.*`` opts (which supervised-only training does
not read: ``SEMI.ENABLED False``), e.g. supervised-only baselines beside an ``oracle``
diagnosis; a (budget, seed, method) found twice stops the merge, naming both files.

Diagnosis (``--folder`` or ``--pool``: the unlabelled set's first images are the rest of the
labelled pool, masks known; a folder's own unlabelled images have none, so diagnose on a folder
without them): ``--only semi ... SEMI.UNLABELED_GROUND_TRUTH measure`` logs the kept
pseudo-labels' precision per class (``semi/pseudo_precision*`` in each run's metrics.json), and
``SEMI.UNLABELED_GROUND_TRUTH oracle`` trains on the ground truth in their place — the gap
between the oracle and the real run is what better pseudo-labels could bring; an oracle no
better than supervised-only points at the unlabelled pipeline itself. ``oracle_kept`` keeps the
teacher's choice of pixels and gives them their true labels: a run as bad as the real one
blames the pseudo-labels' coverage and class mix, not their wrong pixels.
"""
import argparse
import json
import logging
import multiprocessing
import os
import random
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from hiervl.config import load_config
from hiervl.data.datasets.folder import load_or_create_splits
from hiervl.engine import HierVLTrainer

logger = logging.getLogger("hiervl.benchmark_semi")

DEMO_CONFIG = "configs/demo/hiervl_demo.yaml"
FOLDER_CONFIG = "configs/custom/hiervl_folder_cpu.yaml"
ALL = "all"
DEFAULT_OUTPUT = "output/benchmark_semi"
# Registered names of the drawn subsets inside each training process.
LABELED_NAME, UNLABELED_NAME = "benchmark_semi_labeled", "benchmark_semi_unlabeled"
# Result keys of one budget and seed, and their column titles.
COLUMNS = (
    ("supervised", "supervised-only"),
    ("teacher", "semi teacher"),
    ("student", "semi student"),
)


# ---- the data of each run --------------------------------------------------------------------


@dataclass
class Subset:
    """The training data of one budget and seed.

    Attributes:
        budget: as asked (``"10"``, ``"all"``).
        seed: SEED of the runs, also the seed of the draw.
        labeled / unlabeled: dataset dicts drawn by the tool, or None when ``names`` holds
            registered names (the demo's fixed splits).
        names: registered ``(labelled, unlabelled)`` names used as they are.
        num_labeled / num_unlabeled: image counts (counted from the data).
    """

    budget: str
    seed: int
    num_labeled: int
    num_unlabeled: int
    labeled: Optional[List[dict]] = None
    unlabeled: Optional[List[dict]] = None
    names: Optional[Tuple[str, str]] = None
    metadata: Dict[str, Any] = field(default_factory=dict)


def draw_subsets(
    pool: Sequence[dict], extra_unlabeled: Sequence[dict], budgets: Sequence[str], seed: int
) -> Dict[str, Tuple[List[dict], List[dict]]]:
    """Nested labelled subsets of ``pool`` for one seed and their unlabelled complements.

    One permutation of ``pool`` per seed (``random.Random(seed)``); budget ``n`` takes its first
    ``n`` images, ``all`` the whole pool. The unlabelled set is the rest of the pool (their
    masks stay in the dicts; the unlabelled mapper drops them) followed by ``extra_unlabeled``.

    Returns:
        ``{budget: (labelled dicts, unlabelled dicts)}``.
    """
    order = list(pool)
    random.Random(seed).shuffle(order)
    subsets = {}
    for budget in budgets:
        n = len(order) if budget == ALL else int(budget)
        if not 0 < n <= len(order):
            raise ValueError(f"labelled budget {budget}: the pool has {len(order)} images")
        subsets[budget] = (order[:n], order[n:] + list(extra_unlabeled))
    return subsets


def _metadata(name: str) -> Dict[str, Any]:
    """The pool's metadata (classes, colours, ignore label, descriptions) for its subsets."""
    meta = MetadataCatalog.get(name).as_dict()
    for key in ("name", "split_file"):  # the subsets have their own name and no split file
        meta.pop(key, None)
    return meta


def folder_opts(folder: str) -> List[str]:
    """Config opts that register a folder dataset and evaluate on its val split (the
    config's ``DATASETS.CUSTOM.NAME`` decides the names)."""
    return ["DATASETS.CUSTOM.ROOT", folder]


def build_subsets(args: argparse.Namespace, cfg) -> List[Subset]:
    """Every (budget, seed)'s training data, in the order of ``--labeled`` then ``--seeds``."""
    if args.folder or args.pool:
        if args.folder:
            name = cfg.DATASETS.CUSTOM.NAME
            labeled_pool, unlabeled_pools = f"{name}_train_labeled", []
            splits = load_or_create_splits(
                cfg.DATASETS.CUSTOM.ROOT, val_fraction=float(cfg.DATASETS.CUSTOM.VAL_FRACTION)
            )
            if splits.unlabeled:
                unlabeled_pools = [f"{name}_train_unlabeled"]
        else:
            labeled_pool, unlabeled_pools = args.pool[0], list(args.pool[1:])
        pool = DatasetCatalog.get(labeled_pool)
        extra = [d for n in unlabeled_pools for d in DatasetCatalog.get(n)]
        metadata = _metadata(labeled_pool)
        subsets = []
        for seed in args.seeds:
            drawn = draw_subsets(pool, extra, args.labeled, seed)
            for budget in args.labeled:
                labeled, unlabeled = drawn[budget]
                subsets.append(
                    Subset(
                        budget,
                        seed,
                        len(labeled),
                        len(unlabeled),
                        labeled,
                        unlabeled,
                        metadata=metadata,
                    )
                )
        return subsets
    subsets = []
    for seed in args.seeds:
        for budget in args.labeled:
            names = (f"hiervl_demo_train_{budget}_labeled", f"hiervl_demo_train_{budget}_unlabeled")
            missing = [n for n in names if n not in DatasetCatalog.list()]
            if missing:
                raise SystemExit(
                    f"--labeled {budget}: no registered {missing} (the demo's budgets are 8 and "
                    f"16; for other data give --folder or --pool)"
                )
            counts = [len(DatasetCatalog.get(n)) for n in names]
            subsets.append(Subset(budget, seed, counts[0], counts[1], names=names))
    return subsets


def _register(name: str, dicts: List[dict], metadata: Dict[str, Any]) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(**metadata)


# ---- one training run ------------------------------------------------------------------------


def train_and_eval_metrics(config_file: str, opts: List[str]) -> Dict[str, Dict[str, float]]:
    """Train with ``config_file`` + ``opts`` and return the final evaluation's metrics
    (``sem_seg`` and, for a semi run, ``student/sem_seg``: mIoU, per-class IoU, ...)."""
    cfg = load_config(config_file, opts)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_all_rng(cfg.SEED)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # the evaluation hook evaluates once more after the last step; reuse its results
    results = trainer._last_eval_results
    return {k: dict(v) for k, v in results.items() if isinstance(v, dict) and "mIoU" in v}


def train_and_eval(config_file: str, opts: List[str]) -> Dict[str, float]:
    """The val mIoU of :func:`train_and_eval_metrics` per result key (``sem_seg``, ...)."""
    return {k: v["mIoU"] for k, v in train_and_eval_metrics(config_file, opts).items()}


def run_one(
    config_file: str,
    common: List[str],
    output: str,
    subset: Subset,
    method: str,
    extra_opts: Sequence[str] = (),
) -> Dict[str, Any]:
    """Train one method (``supervised`` or ``semi``) on one budget and seed.

    Returns:
        ``{"budget", "seed", "method", "num_labeled", "num_unlabeled", "opts", "metrics":
        {key: metrics}}`` with key ``supervised``, or ``teacher`` and ``student`` for the semi
        run; ``opts`` = ``extra_opts``, the user's extra config opts (part of ``common``), for
        :func:`merge_results`.
    """
    setup_logger(name="hiervl")
    setup_logger()
    if subset.names is not None:
        labeled_name, unlabeled_name = subset.names
    else:
        labeled_name, unlabeled_name = LABELED_NAME, UNLABELED_NAME
        _register(labeled_name, subset.labeled, subset.metadata)
        _register(unlabeled_name, subset.unlabeled, dict(subset.metadata, labeled=False))
    out = os.path.join(output, f"labeled_{subset.budget}", f"seed{subset.seed}", method)
    os.makedirs(out, exist_ok=True)
    for file_name, dataset in (("labeled.txt", labeled_name), ("unlabeled.txt", unlabeled_name)):
        # the images this run trained on, for the record
        with open(os.path.join(out, file_name), "w") as f:
            f.writelines(f"{d['file_name']}\n" for d in DatasetCatalog.get(dataset))
    opts = common + [
        "DATASETS.TRAIN",
        f"('{labeled_name}',)",
        "SEMI.UNLABELED_DATASETS",
        f"('{unlabeled_name}',)",
        "SEED",
        str(subset.seed),
        "OUTPUT_DIR",
        out,
    ]
    if method == "supervised":
        opts += ["SEMI.ENABLED", "False"]
    results = train_and_eval_metrics(config_file, opts)
    if method == "supervised":
        metrics = {"supervised": results["sem_seg"]}
    else:
        metrics = {"teacher": results["sem_seg"]}
        if "student/sem_seg" in results:
            metrics["student"] = results["student/sem_seg"]
    return {
        "budget": subset.budget,
        "seed": subset.seed,
        "method": method,
        "num_labeled": subset.num_labeled,
        "num_unlabeled": subset.num_unlabeled,
        "opts": list(extra_opts),
        "metrics": metrics,
    }


# ---- the report ------------------------------------------------------------------------------


def _mean_std(values: List[float]) -> str:
    """``mean ± sample std`` (the mean alone for one value); never "-0.00"."""
    mean = round(statistics.mean(values), 2) + 0.0
    if len(values) < 2:
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def _ahead(a: float, b: float) -> bool:
    """``a`` ahead of ``b`` at the report's precision (0.01 mIoU): printed ties are not a win."""
    return round(a, 2) > round(b, 2)


def summary(results: Dict[int, Dict[str, float]]) -> List[str]:
    """Lines of one budget's report: one per seed (val mIoU), then the mean ± sample std over
    seeds and how many seeds put the semi-supervised teacher ahead of supervised-only."""
    present = [(k, name) for k, name in COLUMNS if any(k in r for r in results.values())]
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
    paired = [r for r in results.values() if _paired(r)]
    if paired:
        ahead = sum(_ahead(r["teacher"], r["supervised"]) for r in paired)
        gain = [r["teacher"] - r["supervised"] for r in paired]
        lines.append(
            f"semi teacher - supervised: {_mean_std(gain)} mIoU; ahead in {ahead} of "
            f"{len(paired)} seeds"
        )
    return lines


def budget_table(
    by_budget: Dict[str, Dict[int, Dict[str, float]]], sizes: Dict[str, int]
) -> List[str]:
    """The summary over budgets: mean val mIoU of both methods, the gain, the headroom and the
    share of it the semi teacher recovers (means ± sample std over seeds).

    Args:
        by_budget: ``{budget: {seed: {"supervised"|"teacher"|"student": mIoU}}}``.
        sizes: labelled images of each budget (the largest one is the headroom's reference).

    The headroom of a budget is supervised(largest budget) − supervised(budget), per seed (the
    same seed draws nested labelled sets); the share recovered is the mean gain over the mean
    headroom, left out when the headroom is not positive.
    """
    largest = max(sizes, key=lambda b: sizes[b])
    top = {s: r["supervised"] for s, r in by_budget.get(largest, {}).items() if "supervised" in r}
    lines = [
        f"{'labelled':>8s}  {'supervised-only':>15s}  {'semi teacher':>15s}  {'gain':>13s}  "
        f"{'headroom':>13s}  {'recovered':>9s}"
    ]
    for budget in sorted(by_budget, key=lambda b: sizes[b]):
        runs = by_budget[budget]
        sup = [r["supervised"] for r in runs.values() if "supervised" in r]
        teacher = [r["teacher"] for r in runs.values() if "teacher" in r]
        gain = [r["teacher"] - r["supervised"] for r in runs.values() if _paired(r)]
        headroom = [
            top[s] - r["supervised"] for s, r in runs.items() if s in top and "supervised" in r
        ]
        if budget == largest:
            headroom = []
        recovered = "-"
        if gain and headroom and statistics.mean(headroom) > 0:
            recovered = f"{100 * statistics.mean(gain) / statistics.mean(headroom):.0f} %"
        cells = [_mean_std(v) if v else "-" for v in (sup, teacher, gain, headroom)]
        lines.append(
            f"{sizes[budget]:8d}  {cells[0]:>15s}  {cells[1]:>15s}  {cells[2]:>13s}  "
            f"{cells[3]:>13s}  {recovered:>9s}"
        )
    return lines


def _paired(r: Dict[str, float]) -> bool:
    return "teacher" in r and "supervised" in r


def collect(
    runs: List[Dict[str, Any]],
) -> Tuple[Dict[str, Dict[int, Dict[str, float]]], Dict[str, int], Dict[str, int]]:
    """``{budget: {seed: {key: mIoU}}}`` (seeds sorted), labelled and unlabelled image counts
    per budget, from the finished runs."""
    by_budget: Dict[str, Dict[int, Dict[str, float]]] = {}
    sizes, unlabeled = {}, {}
    for run in runs:
        seeds = by_budget.setdefault(run["budget"], {})
        seeds.setdefault(run["seed"], {}).update({k: m["mIoU"] for k, m in run["metrics"].items()})
        sizes[run["budget"]] = run["num_labeled"]
        unlabeled[run["budget"]] = run["num_unlabeled"]
    by_budget = {b: dict(sorted(s.items())) for b, s in by_budget.items()}
    return by_budget, sizes, unlabeled


def report_lines(header: List[str], runs: List[Dict[str, Any]]) -> List[str]:
    """The whole report: header, one block per budget (smallest first), the budget table."""
    by_budget, sizes, unlabeled = collect(runs)
    lines = list(header)
    for budget in sorted(by_budget, key=lambda b: sizes[b]):
        lines.append("")
        lines.append(
            f"labelled images: {sizes[budget]} (--labeled {budget}), unlabelled images: "
            f"{unlabeled[budget]}; val mIoU"
        )
        lines += summary(by_budget[budget])
    if len(by_budget) > 1:
        lines += ["", "mean val mIoU over seeds; headroom = supervised(largest) - supervised"]
        lines += budget_table(by_budget, sizes)
    return lines


def plot(runs: List[Dict[str, Any]], path: str, title: str) -> None:
    """Val mIoU (mean ± sample std over seeds) against the number of labelled images, one line
    per method, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_budget, sizes, _ = collect(runs)
    order = sorted(by_budget, key=lambda b: sizes[b])
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = {
        "supervised": ("supervised-only", "o-", "tab:blue"),
        "teacher": ("semi-supervised (teacher)", "s-", "tab:orange"),
    }
    for key, (label, marker, color) in styles.items():
        xs, means, stds = [], [], []
        for budget in order:
            values = [r[key] for r in by_budget[budget].values() if key in r]
            if values:
                xs.append(sizes[budget])
                means.append(statistics.mean(values))
                stds.append(statistics.stdev(values) if len(values) > 1 else 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=stds, fmt=marker, color=color, capsize=4, label=label)
    if len(order) > 1 and sizes[order[-1]] / max(sizes[order[0]], 1) >= 8:
        ax.set_xscale("log")
    ax.set_xticks([sizes[b] for b in order])
    ax.set_xticklabels([str(sizes[b]) for b in order])
    ax.minorticks_off()
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("val mIoU (%)")
    seeds = sorted({r["seed"] for r in runs})
    ax.set_title(
        f"{title}\nmean ± std over {len(seeds)} seed{'s' if len(seeds) > 1 else ''}", fontsize=10
    )
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(output: str, header: List[str], runs: List[Dict[str, Any]], title: str) -> str:
    """Write ``benchmark.txt``, ``results.json`` and ``benchmark.png`` of ``runs`` to
    ``output``; returns the report."""
    report = "\n".join(report_lines(header, runs))
    with open(os.path.join(output, "benchmark.txt"), "w") as f:
        f.write(report + "\n")
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump({"header": header, "title": title, "runs": runs}, f, indent=1)
    plot(runs, os.path.join(output, "benchmark.png"), title)
    return report


# ---- reports over several benchmarks ---------------------------------------------------------

SEEDS_FIELD = "; seeds: "
OPTS_LINE = "extra opts: "


def _run_opts(run: Dict[str, Any], header: List[str]) -> List[str]:
    """A run's extra opts: recorded with the run, or (files written before runs recorded them)
    the header's ``extra opts:`` line."""
    if "opts" in run:
        return list(run["opts"])
    line = next((h for h in header if h.startswith(OPTS_LINE)), "")
    return line[len(OPTS_LINE) :].split()


def _opts_differ_outside_semi(a: List[str], b: List[str]) -> List[str]:
    """Keys of ``KEY VALUE`` opts lists ``a`` and ``b`` that differ and are not ``SEMI.*``
    (a list that is not pairs differs as a whole)."""
    if a == b:
        return []
    if len(a) % 2 or len(b) % 2:
        return ["(opts not in KEY VALUE pairs)"]
    da, db = dict(zip(a[::2], a[1::2])), dict(zip(b[::2], b[1::2]))
    keys = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    return [k for k in keys if not k.startswith("SEMI.")]


def merge_results(
    files: Sequence[str], methods: Optional[Sequence[Optional[str]]] = None
) -> Tuple[List[str], List[Dict[str, Any]], str]:
    """The header, runs and plot title of one report over the ``results.json`` of several
    benchmarks; ``methods[i]`` (``supervised`` / ``semi``), when given, keeps only that
    method's runs of ``files[i]``.

    Raises:
        ValueError (naming the files): data, config or steps differ; runs of one method differ
        in their opts; supervised-only and semi runs differ in a non-``SEMI.*`` opt; one budget
        has different labelled sets; a (budget, seed, method) is found twice.
    """
    runs: List[Dict[str, Any]] = []
    origin: Dict[Tuple[str, int, str], str] = {}
    setting: Optional[Tuple[str, str, str]] = None  # (file, data line, config and steps)
    opts: Dict[str, Tuple[str, List[str]]] = {}  # method -> (file, opts)
    sizes: Dict[str, Tuple[str, int]] = {}
    title = ""
    for path, method in zip(files, methods or [None] * len(files)):
        try:
            with open(path) as f:
                data = json.load(f)
            header, file_runs = data["header"], data["runs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a benchmark's results.json ({e})") from e
        this = (path, header[0], header[1].split(SEEDS_FIELD)[0])
        if setting is None:
            setting = this
        elif this[1:] != setting[1:]:
            raise ValueError(
                f"{path} and {setting[0]} are not the same setting:\n  {this[1]}; {this[2]}\n  "
                f"{setting[1]}; {setting[2]}"
            )
        title = title or data.get("title", "")
        for run in file_runs:
            if method not in (None, run["method"]):
                continue
            run = dict(run, opts=_run_opts(run, header))
            key = (run["budget"], run["seed"], run["method"])
            if key in origin:
                raise ValueError(
                    f"budget {key[0]}, seed {key[1]}, {key[2]}: in {origin[key]} and in {path}"
                )
            origin[key] = path
            first = sizes.setdefault(run["budget"], (path, run["num_labeled"]))
            if first[1] != run["num_labeled"]:
                raise ValueError(
                    f"budget {run['budget']}: {first[1]} labelled images in {first[0]}, "
                    f"{run['num_labeled']} in {path}"
                )
            seen = opts.setdefault(run["method"], (path, run["opts"]))
            if seen[1] != run["opts"]:
                raise ValueError(
                    f"{run['method']} runs with different opts: {' '.join(seen[1]) or '(none)'} "
                    f"in {seen[0]}, {' '.join(run['opts']) or '(none)'} in {path}"
                )
            runs.append(run)
    if setting is None:
        raise ValueError("nothing to merge")
    if len(opts) == 2:
        (file_a, a), (file_b, b) = opts["supervised"], opts["semi"]
        keys = _opts_differ_outside_semi(a, b)
        if keys:
            raise ValueError(
                f"the supervised-only runs ({file_a}) and the semi runs ({file_b}) differ in "
                f"{', '.join(keys)}: only SEMI.* opts may differ (supervised-only training "
                f"does not read them)"
            )
    seeds = sorted({r["seed"] for r in runs})
    header = [setting[1], f"{setting[2]}{SEEDS_FIELD}{' '.join(map(str, seeds))}"]
    distinct = {tuple(o) for _, o in opts.values()}
    if len(distinct) == 1 and distinct != {()}:
        header.append(OPTS_LINE + " ".join(next(iter(distinct))))
    elif len(distinct) > 1:
        names = {"supervised": "supervised-only", "semi": "semi-supervised"}
        for method, (_, o) in sorted(opts.items(), key=lambda kv: kv[0] != "supervised"):
            header.append(f"extra opts of the {names[method]} runs: {' '.join(o) or '(none)'}")
    header.append(
        "merged from: "
        + ", ".join(f + (f" ({m} runs)" if m else "") for f, m in zip(files, methods or files))
    )
    if not title:  # files written before they recorded it: '<data folder>, <N> steps'
        data_path = setting[1].split(";")[0].replace("data: ", "", 1)
        steps = setting[2].split("steps: ")[-1]
        title = f"{os.path.basename(os.path.normpath(data_path))}, {steps} steps"
    return header, runs, title


def results_file(path: str) -> str:
    """A benchmark's ``results.json``: ``path`` itself or the one in the folder ``path``."""
    return os.path.join(path, "results.json") if os.path.isdir(path) else path


def merge_source(item: str) -> Tuple[str, Optional[str]]:
    """``PATH`` or ``PATH:supervised`` / ``PATH:semi`` (that method's runs only) ->
    (results.json, method or None)."""
    path, _, method = item.rpartition(":")
    if method in ("supervised", "semi") and path:
        return results_file(path), method
    return results_file(item), None


def merge_main(args: argparse.Namespace) -> str:
    files, methods = zip(*map(merge_source, args.merge))
    try:
        header, runs, title = merge_results(files, methods)
    except ValueError as e:
        raise SystemExit(f"--merge: {e}") from e
    os.makedirs(args.output, exist_ok=True)
    report = write_report(args.output, header, runs, title)
    print(report)
    return report


# ---- command line ----------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config-file",
        default=None,
        help=f"default: {FOLDER_CONFIG} with --folder, else {DEMO_CONFIG}",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--folder", help="folder dataset (docs/CUSTOM_DATA.md)")
    source.add_argument(
        "--pool",
        nargs="+",
        metavar="NAME",
        help="registered labelled dataset to draw from, then optional unlabelled ones",
    )
    parser.add_argument(
        "--labeled",
        nargs="+",
        default=["8"],
        help="labelled budgets: image counts and/or 'all' (the whole labelled pool)",
    )
    parser.add_argument("--iters", type=int, help="SOLVER.MAX_ITER (default: the config's)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="SEED of each repetition (initialisation, data order and the labelled draw); the "
        "report gives the mean and spread over them: single runs differ by several mIoU",
    )
    parser.add_argument("--output", help=f"default: {DEFAULT_OUTPUT} (required with --merge)")
    parser.add_argument(
        "--only",
        choices=("supervised", "semi"),
        help="run one of the two (e.g. the headroom: supervised-only at every budget)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="trainings run at once, one process each (set OMP_NUM_THREADS to cores / jobs)",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="OUTPUT",
        help="train nothing: one report (and plot) over finished benchmarks, given as their "
        "--output folders or results.json files (PATH:supervised or PATH:semi takes that "
        "method's runs only), written to --output",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="extra config opts for all runs")
    args = parser.parse_args(argv)
    if args.merge:
        given = [f for f, v in (("--folder", args.folder), ("--pool", args.pool)) if v]
        given += ["extra opts"] if args.opts else []
        if given:
            parser.error(f"--merge trains nothing: {', '.join(given)} cannot be used with it")
        if args.output is None:  # never a default folder that may hold another benchmark
            parser.error("--merge needs --output, the folder of the merged report")
        if os.path.abspath(args.output) in {
            os.path.abspath(os.path.dirname(merge_source(p)[0]) or ".") for p in args.merge
        }:
            parser.error("--merge: --output must not be one of the merged benchmarks' folders")
    for budget in args.labeled:
        if budget != ALL and not (budget.isdigit() and int(budget) > 0):
            parser.error(f"--labeled: {budget!r} is neither a positive count nor 'all'")
    args.output = args.output or DEFAULT_OUTPUT
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    if args.config_file is None:
        args.config_file = FOLDER_CONFIG if args.folder else DEMO_CONFIG
    return args


def main(argv: Optional[Sequence[str]] = None) -> str:
    args = parse_args(argv)
    if args.merge:
        return merge_main(args)
    setup_logger(name="hiervl")
    setup_logger()
    # the runs' folders are scratch (the results are the report and results.json): a re-run
    # trains over them
    common = ["SOLVER.OVERWRITE_OUTPUT_DIR", "True"]
    common += folder_opts(args.folder) if args.folder else []
    if args.iters is not None:
        common += ["SOLVER.MAX_ITER", str(args.iters)]
        common += ["SOLVER.CHECKPOINT_PERIOD", str(10 * args.iters)]
    common += list(args.opts)
    cfg = load_config(args.config_file, common)
    test_names = list(cfg.DATASETS.TEST)
    if args.folder:
        test_names = [f"{cfg.DATASETS.CUSTOM.NAME}_val"]
        common += ["DATASETS.TEST", f"('{test_names[0]}',)"]
    subsets = build_subsets(args, cfg)
    data = args.folder or (", ".join(args.pool) if args.pool else "the embedded demo's splits")
    header = [
        f"data: {data}; evaluated on {', '.join(test_names)}",
        f"config: {args.config_file}; steps: {cfg.SOLVER.MAX_ITER}; seeds: "
        f"{' '.join(map(str, args.seeds))}",
    ]
    if args.opts:
        header.append(f"extra opts: {' '.join(args.opts)}")
    name = os.path.basename(os.path.normpath(args.folder)) if args.folder else data
    tasks = []
    for subset in subsets:
        for method in ("supervised", "semi"):
            if args.only not in (None, method):
                continue
            if method == "semi" and subset.num_unlabeled == 0:
                continue  # e.g. 'all' of a folder without unlabelled images
            tasks.append((subset, method))
    os.makedirs(args.output, exist_ok=True)
    runs: List[Dict[str, Any]] = []

    title = f"{name}, {cfg.SOLVER.MAX_ITER} steps"

    def record(run: Dict[str, Any]) -> str:
        # the report so far, after every run: a long benchmark that is stopped still leaves one
        runs.append(run)
        report = write_report(args.output, header, runs, title)
        logger.info("\n%s", report)
        return report

    report = ""
    common_task = (args.config_file, common, args.output)
    if args.jobs == 1:
        for subset, method in tasks:
            report = record(run_one(*common_task, subset, method, args.opts))
    else:
        # fresh interpreters: a forked child would inherit the parent's torch thread pool
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
            futures = [pool.submit(run_one, *common_task, s, m, args.opts) for s, m in tasks]
            for future in as_completed(futures):
                report = record(future.result())
    print(report)  # the script's result, on stdout
    return report


if __name__ == "__main__":
    main()
