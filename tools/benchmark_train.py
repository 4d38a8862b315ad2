#!/usr/bin/env python
"""Time complete semi-supervised training steps of HierVL (or HVLFormer) on synthetic data.

The step is the trainer's own: ``HierVLTrainer`` (``--variant hvlformer``: ``HVLFormerTrainer``)
is built from the config with its data loaders replaced by synthetic ones and no hooks, and
``trainer.run_step()`` is called — EMA teacher pseudo-labels on the weak views, CutMix, the
student's supervised + unsupervised losses (HVLFormer: + the original / weak views and CMCR),
backward, gradient clipping, optimiser step, EMA update. Labelled images carry a few class
rectangles; since a random-init teacher is never confident, ``SEMI.CONF_THRESHOLD`` is set to 0 so
that every pseudo-labelled pixel is kept and the unlabelled losses cost what they cost in a
real run (override with ``--opts``).

Printed: median step time, images/s (labelled + unlabelled), peak GPU memory after the warm-up
(``torch.cuda.max_memory_allocated``), FLOPs of one step (``torch.utils.flop_counter``, see
``tools/benchmark_common.py``: teacher forward + student forward and backward), achieved TFLOP/s and
MFU against the device's dense bf16 peak, the device, dtype and MSDeformAttn path.

    python tools/benchmark_train.py                                 # VOC 8 + 8 at 512², bf16
    python tools/benchmark_train.py --variant hvlformer
    python tools/benchmark_train.py --amp fp32 --opts MODEL.HIERVL.PIXEL_DECODER.MSDA_IMPL reference
    python tools/benchmark_train.py --smoke                         # CPU, tiny model, seconds
"""
import argparse
import gc
import json
import os
import sys
import tempfile
from typing import Dict, List, Optional

import torch
from detectron2.config import CfgNode
from detectron2.utils.events import EventStorage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark_common as bm  # noqa: E402  (tools/benchmark_common.py)
from benchmark_common import count_flops, mfu, peak_tflops_for  # noqa: E402

DEFAULT_CONFIGS = {
    "hiervl": "configs/voc/hiervl_92.yaml",
    "hvlformer": "projects/HVLFormer/configs/voc/hvlformer_92.yaml",
}
SMOKE = {
    "device": "cpu",
    "tiny": True,
    "size": 64,
    "batch": 2,
    "unlabeled_batch": 2,
    "iters": 2,
    "warmup": 1,
}


class SyntheticLoader:
    """Endless stream of one fixed batch with the ``ResumableLoader.next()`` interface.

    Labelled items: ``image`` uint8 ``[3, S, S]``, ``sem_seg`` long ``[S, S]`` (four class
    rectangles, a 255 border). Unlabelled items: ``image`` (weak / original view),
    ``image_strong``, ``image_weak`` (HVLFormer's extra view) uint8 ``[3, S, S]`` and
    ``ignore_mask`` bool ``[S, S]`` (all False: no padding).
    """

    def __init__(self, *, batch: int, size: int, num_classes: int, labeled: bool, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.items: List[Dict] = []
        for _ in range(batch):
            image = torch.randint(0, 256, (3, size, size), generator=gen, dtype=torch.uint8)
            item = {"image": image, "height": size, "width": size}
            if labeled:
                sem = torch.full((size, size), 255, dtype=torch.long)
                half, edge = size // 2, max(size // 32, 1)
                classes = torch.randint(0, num_classes, (4,), generator=gen).tolist()
                for k, (y, x) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
                    sem[y + edge : y + half - edge, x + edge : x + half - edge] = classes[k]
                item["sem_seg"] = sem
            else:
                item["image_strong"] = torch.randint(
                    0, 256, (3, size, size), generator=gen, dtype=torch.uint8
                )
                item["image_weak"] = image.clone()
                item["ignore_mask"] = torch.zeros(size, size, dtype=torch.bool)
            self.items.append(item)

    def next(self) -> List[Dict]:
        return [dict(item) for item in self.items]

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state: Dict) -> None:
        del state


def trainer_class(variant: str):
    """The variant's trainer with synthetic loaders and no hooks."""
    if variant == "hvlformer":
        base = bm.import_hvlformer().HVLFormerTrainer
    else:
        from hiervl.engine import HierVLTrainer as base

    def loader(cfg: CfgNode, batch: int, labeled: bool, seed: int) -> SyntheticLoader:
        return SyntheticLoader(
            batch=batch,
            size=cfg.INPUT.CROP.SIZE[0],
            num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            labeled=labeled,
            seed=seed,
        )

    class BenchmarkTrainer(base):
        @classmethod
        def build_train_loader(cls, cfg, seed=0):
            return loader(cfg, cfg.SOLVER.IMS_PER_BATCH, True, seed)

        @classmethod
        def build_unlabeled_loader(cls, cfg, seed=1):
            return loader(cfg, cfg.SEMI.IMS_PER_BATCH_UNLABELED, False, seed)

        def build_hooks(self):
            return []

    return BenchmarkTrainer


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--variant",
        choices=bm.VARIANTS + ("all",),
        default="hiervl",
        help="all: every variant, one after the other, in this process",
    )
    p.add_argument(
        "--config-file",
        default=None,
        help="default: the variant's VOC 92 config ("
        + ", ".join(f"{k}: {v}" for k, v in DEFAULT_CONFIGS.items())
        + ")",
    )
    p.add_argument("--batch", type=int, default=8, help="labelled images per step")
    p.add_argument("--unlabeled-batch", type=int, default=8, help="unlabelled images per step")
    p.add_argument("--size", type=int, default=512, help="square crop side (INPUT.CROP.SIZE)")
    p.add_argument("--iters", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before (kernels, cache)")
    p.add_argument("--amp", choices=("bf16", "fp32"), default="bf16", help="SOLVER.AMP")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny test config instead of the file")
    p.add_argument("--smoke", action="store_true", help="CPU smoke: " + str(SMOKE))
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the device; default from a table by device name",
    )
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... (last)")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    if args.variant == "all" and args.config_file is not None:
        p.error("--config-file needs a single --variant")
    return args


def benchmark(args: argparse.Namespace, variant: str, device: torch.device) -> Dict:
    """Build the variant's trainer, time its steps and return the figures (see module doc)."""
    config_file = args.config_file or DEFAULT_CONFIGS[variant]
    settings = [
        ("MODEL.HIERVL.CLIP.PRETRAINED", ""),
        ("SOLVER.IMS_PER_BATCH", args.batch),
        ("SEMI.IMS_PER_BATCH_UNLABELED", args.unlabeled_batch),
        ("INPUT.CROP.SIZE", (args.size, args.size)),
        ("SEMI.ENABLED", True),
        ("SEMI.UNSUP_START_ITER", 0),
        ("SEMI.CONF_THRESHOLD", 0.0),
        ("SOLVER.AMP.ENABLED", args.amp == "bf16"),
        ("SOLVER.AMP.DTYPE", "bfloat16"),
        ("DATALOADER.NUM_WORKERS", 0),
        ("OUTPUT_DIR", tempfile.mkdtemp(prefix="hiervl_bench_")),
    ]
    cfg = bm.build_config(
        variant=variant,
        config_file=config_file,
        tiny=args.tiny,
        device=str(device),
        settings=settings,
        opts=args.opts,
    )
    torch.manual_seed(0)
    trainer = trainer_class(variant)(cfg)
    n_images = args.batch + args.unlabeled_batch

    with EventStorage(0) as storage, bm.capture_msda_path() as msda:
        trainer.storage = storage
        step = {"i": 0}

        def run_step():
            trainer.iter = storage.iter = step["i"]
            trainer.run_step()
            step["i"] += 1

        bm.timed(run_step, device, args.warmup)
        bm.reset_peak_memory(device)
        times = bm.timed(run_step, device, args.iters)
        memory = bm.peak_memory(device)
        max_allocated = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        flops = None
        if not args.no_flops:
            _, flops, _ = count_flops(run_step)

    step_s = bm.median(times)
    peak, peak_source = args.peak_tflops, "--peak-tflops"
    if peak is None and device.type == "cuda":
        peak = peak_tflops_for(torch.cuda.get_device_name(device))
        peak_source = "table in tools/benchmark_common.py"
    achieved = flops / step_s / 1e12 if flops is not None else None
    util = mfu(flops, step_s, peak) if flops is not None else None
    if flops is None:
        flops_text = "skipped (--no-flops)"
    else:
        flops_text = f"{flops / 1e12:.4g} TFLOP (teacher fwd + student fwd/bwd)"
    if util is None:
        mfu_text = "n/a (no peak for this device; pass --peak-tflops)"
    else:
        mfu_text = f"{util * 100:.3g} % of {peak:g} TFLOP/s dense bf16 ({peak_source})"
    times_ms = [t * 1e3 for t in times]
    figures = {
        "variant": variant,
        "config": "tiny_config (hiervl.utils.testing)" if args.tiny else config_file,
        "device": bm.device_description(device),
        "dtype": "bf16 autocast (SOLVER.AMP)" if args.amp == "bf16" else "fp32 (no autocast)",
        "msdeformattn": msda["path"],
        "batch": f"{args.batch} labelled + {args.unlabeled_batch} unlabelled, "
        f"{args.size}x{args.size}",
        "steps": f"{args.warmup} warm-up + {args.iters} timed",
        "step time (median)": f"{step_s * 1e3:.1f} ms "
        f"(min {min(times_ms):.1f}, max {max(times_ms):.1f})",
        "images/s": f"{n_images / step_s:.2f}",
        "peak memory": memory,
        "FLOPs/step": flops_text,
        "achieved": "n/a" if achieved is None else f"{achieved:.4g} TFLOP/s",
        "MFU": mfu_text,
    }
    raw = {
        "step_s": step_s,
        "step_times_s": times,
        "images_per_s": n_images / step_s,
        "max_memory_allocated": max_allocated,
        "flops": flops,
        "peak_tflops": peak,
        "mfu": util,
    }
    return {"table": figures, "raw": raw}


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    variants = bm.VARIANTS if args.variant == "all" else (args.variant,)
    results = []
    for variant in variants:
        result = benchmark(args, variant, device)
        if result["table"]["msdeformattn"].startswith("not logged") and results:
            # hiervl.ops logs each dispatch decision once per process: the earlier variant's.
            previous = results[-1]["table"]["msdeformattn"]
            result["table"]["msdeformattn"] = f"{previous} (as logged for the previous variant)"
        results.append(result)
        print(bm.format_table("HierVL training-step benchmark", list(result["table"].items())))
        sys.stdout.flush()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(r["table"], **r["raw"]) for r in results], f, indent=1)
    return results


if __name__ == "__main__":
    main()
