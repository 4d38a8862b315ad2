#!/usr/bin/env python
"""Export a trained HierVL for deployment, and check the export against the PyTorch model.

    # 1. export: <output>/hiervl.onnx (ONNX Runtime) and <output>/hiervl.pt2 (torch.export)
    python tools/export_model.py --config-file configs/demo/hiervl_demo.yaml \\
        --output export/demo MODEL.WEIGHTS output/demo/model_final.pth
    # 2. check both files against the PyTorch model on the val images (exit 1 beyond tolerance)
    python tools/export_model.py --config-file configs/demo/hiervl_demo.yaml \\
        --output export/demo --check MODEL.WEIGHTS output/demo/model_final.pth
    # 3. run the ONNX file on a folder of images, without HierVL (numpy + onnxruntime)
    python deploy/onnx_segmenter.py export/demo/hiervl.onnx --input photos/ --output masks/

The export holds the EMA teacher's weights when the checkpoint has them
(``MODEL.HIERVL.TEST.USE_TEACHER``) and takes windows of the config's test crop
(``MODEL.HIERVL.TEST.CROP_SIZE``, or ``--size``), any batch. The class text embeddings are
computed once, here, for the classes the model predicts over (its training classes,
``MODEL.HIERVL.TEST.CLASS_NAMES``, or ``--classes`` / ``--classes-file``) and stored in the
graph. The model is built on
the CPU with MSDeformAttn's reference path (``grid_sample``), the one that traces. What is
inside the graph and what is not: ``hiervl/export.py``.

``--check`` loads the exported files, runs them through ``deploy/onnx_segmenter.py``'s sliding
window on the images of ``--input`` (a file or folder; repeatable) or of the split
``--dataset`` (default ``DATASETS.TEST[0]``), and compares with the PyTorch model's
sliding-window inference on the same images (no test-time augmentation; the windows and
stride stored in the export). Per file
it prints the largest absolute score difference and the share of pixels whose label agrees; it
exits with 1 when a file differs by more than ``--atol`` or agrees on less than
``--min-agreement``.
"""
import argparse
import json
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "deploy"))

import hiervl.data  # noqa: E402,F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: E402,F401  (registers the HierVL META_ARCH)
from hiervl import export as hx  # noqa: E402
from hiervl.config import load_config  # noqa: E402
from hiervl.data.datasets.folder import read_classes  # noqa: E402
from hiervl.evaluation.visualization import class_list_metadata  # noqa: E402
from hiervl.utils.checkpoint import load_inference_weights  # noqa: E402
from onnx_segmenter import (  # noqa: E402
    IMAGE_EXTENSIONS,
    OnnxSegmenter,
    SlidingWindowSegmenter,
)

logger = logging.getLogger("hiervl.export_model")

FORMATS = ("onnx", "pt2")
FILE_NAMES = {"onnx": "hiervl.onnx", "pt2": "hiervl.pt2"}
# Default tolerance of --check. Scores are sums over the decoder rows of class probability x
# mask probability (between 0 and the number of rows). The exported files compute the same
# float32 operations in another order (fused kernels, other summation orders): on the demo
# model's 40 val images they differ from PyTorch by up to 2.2e-4 (the .pt2) and 1.5e-4 (ONNX
# Runtime). Other weights differ far more: the demo's student checked against its teacher's
# export, by 0.76; so does an image smaller than the window (README, Deploy).
DEFAULT_ATOL = 1e-3
DEFAULT_MIN_AGREEMENT = 0.999


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    p.add_argument("--output", required=True, help="folder of hiervl.onnx and hiervl.pt2")
    p.add_argument(
        "--check",
        action="store_true",
        help="check the exported files in --output against the PyTorch model (no export)",
    )
    p.add_argument(
        "--format",
        choices=FORMATS + ("both",),
        default="both",
        help="the file to write / check (default both)",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="input window (default: MODEL.HIERVL.TEST.CROP_SIZE)",
    )
    p.add_argument("--opset", type=int, default=hx.DEFAULT_OPSET, help="ONNX opset (>= 17)")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes",
        default="",
        help="comma-separated class names to export for instead of the model's classes "
        "(HierVL.set_inference_classes; as demo/demo.py --classes)",
    )
    classes.add_argument(
        "--classes-file",
        default="",
        metavar="FILE",
        help="class names to export for, one per line (a folder dataset's classes.txt)",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        help="--check: an image file or folder (repeat the option for more)",
    )
    p.add_argument(
        "--dataset", default="", help="--check: registered split (default DATASETS.TEST[0])"
    )
    p.add_argument("--limit", type=int, default=0, help="--check: at most N images (0 = all)")
    p.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help="--check: largest score difference"
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=DEFAULT_MIN_AGREEMENT,
        help="--check: smallest share of pixels with the PyTorch model's label",
    )
    p.add_argument("--batch-size", type=int, default=4, help="--check: windows per run")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    return p


def setup_cfg(
    args: argparse.Namespace,
    window: Optional[Sequence[int]] = None,
    stride: Optional[Sequence[int]] = None,
) -> CfgNode:
    """The config with the export's settings: CPU, MSDeformAttn's reference path (the Triton
    kernel neither runs on the CPU nor traces), sliding windows (of ``window`` at ``stride``
    when given), no TTA (the exported graph does not flip or rescale)."""
    opts = list(args.opts) + [
        "MODEL.DEVICE",
        "cpu",
        "MODEL.HIERVL.PIXEL_DECODER.MSDA_IMPL",
        "reference",
        "MODEL.HIERVL.TEST.SLIDING_WINDOW",
        True,
        "TEST.AUG.ENABLED",
        False,
    ]
    if window is not None:
        opts += ["MODEL.HIERVL.TEST.CROP_SIZE", [int(s) for s in window]]
    if stride is not None:
        opts += ["MODEL.HIERVL.TEST.STRIDE", [int(s) for s in stride]]
    return load_config(args.config_file, opts)


def build_inference_model(cfg: CfgNode) -> Tuple[torch.nn.Module, str]:
    model = build_model(cfg).eval()
    loaded = load_inference_weights(
        model, cfg.MODEL.WEIGHTS, use_teacher=cfg.MODEL.HIERVL.TEST.USE_TEACHER
    )
    return model, loaded


def class_names_of(args: argparse.Namespace) -> Tuple[Optional[List[str]], Optional[List]]:
    """``(names, descriptions)`` of ``--classes`` / ``--classes-file``; ``(None, None)``
    without either (the model's classes)."""
    if args.classes_file:
        return read_classes(args.classes_file)
    if args.classes:
        return [n.strip() for n in args.classes.split(",")], None
    return None, None


def class_colors(cfg: CfgNode, names: Sequence[str]) -> List[List[int]]:
    """Colours of ``names``: a training class keeps its colour, other names get distinct
    ones (``class_list_metadata``)."""
    metadata = class_list_metadata(names, MetadataCatalog.get(cfg.DATASETS.TRAIN[0]))
    return [list(c) for c in metadata.stuff_colors]


def export(args: argparse.Namespace) -> Dict[str, str]:
    """Write the files of ``--format`` into ``--output``; returns format -> path."""
    cfg = setup_cfg(args, args.size)
    model, loaded = build_inference_model(cfg)
    given, descriptions = class_names_of(args)
    if given is not None:
        model.set_inference_classes(given, descriptions)
    names = list(model.inference_class_names)
    text, source = hx.window_text(model)
    window = hx.WindowSegmenter(model, text, source).eval()
    size = tuple(int(s) for s in cfg.MODEL.HIERVL.TEST.CROP_SIZE)
    info = hx.deployment_info(
        model,
        class_names=names,
        class_colors=class_colors(cfg, names),
        class_descriptions=descriptions,
        window=size,
        stride=cfg.MODEL.HIERVL.TEST.STRIDE,
        input_format=cfg.INPUT.FORMAT,
        weights=loaded,
    )
    logger.info("Exporting the %s weights: window %s, %d classes", loaded, size, len(names))
    start = time.perf_counter()
    program = hx.export_program(window, size)
    logger.info("torch.export: %.1f s", time.perf_counter() - start)
    os.makedirs(args.output, exist_ok=True)
    written = {}
    formats = FORMATS if args.format == "both" else (args.format,)
    if "pt2" in formats:
        path = os.path.join(args.output, FILE_NAMES["pt2"])
        hx.save_program(program, path, info)
        written["pt2"] = path
    if "onnx" in formats:
        path = os.path.join(args.output, FILE_NAMES["onnx"])
        start = time.perf_counter()
        hx.export_onnx(program, path, info, opset=args.opset)
        logger.info("ONNX (opset %d): %.1f s", args.opset, time.perf_counter() - start)
        written["onnx"] = path
    for fmt, path in written.items():
        logger.info("Wrote %s (%.1f MB)", path, os.path.getsize(path) / 2**20)
    with open(os.path.join(args.output, "hiervl.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    return written


def load_segmenters(
    folder: str, formats: Sequence[str], *, batch_size: int = 4, threads: int = 0
) -> Tuple[Dict[str, SlidingWindowSegmenter], Dict]:
    """The exported files of ``formats`` in ``folder`` as sliding-window segmenters, and their
    metadata (the same in every file).

    Args:
        folder: the ``--output`` folder of the export.
        formats: ``"onnx"`` and / or ``"pt2"``.
        batch_size: windows per run.
        threads: ONNX Runtime's intra-op threads (0: its default); the program runs with
            torch's threads.
    """
    segmenters, infos = {}, {}
    for fmt in formats:
        path = os.path.join(folder, FILE_NAMES[fmt])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: export first (without --check)")
        if fmt == "onnx":
            segmenters[fmt] = OnnxSegmenter(path, batch_size=batch_size, threads=threads)
            infos[fmt] = segmenters[fmt].info
        else:
            program, info = hx.load_program(path)
            segmenters[fmt] = SlidingWindowSegmenter(
                hx.program_runner(program), info, batch_size=batch_size
            )
            infos[fmt] = info
    first = next(iter(infos.values()))
    for fmt, info in infos.items():
        if info != first:
            raise ValueError(f"the metadata of {FILE_NAMES[fmt]} differs: export both again")
    return segmenters, first


def check_images(args: argparse.Namespace, cfg: CfgNode) -> List[Tuple[str, np.ndarray]]:
    """``(name, [H, W, 3] uint8 RGB)`` of ``--input`` or of the split's images (``--dataset``,
    default ``DATASETS.TEST[0]``), at most ``--limit``."""
    if args.input:
        files = []
        for path in args.input:
            if os.path.isdir(path):
                files += sorted(
                    os.path.join(path, n)
                    for n in os.listdir(path)
                    if n.lower().endswith(IMAGE_EXTENSIONS)
                )
            else:
                files.append(path)
    else:
        dataset = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if not dataset:
            raise ValueError("no images to check: give --input or --dataset")
        files = [d["file_name"] for d in DatasetCatalog.get(dataset)]
    if args.limit > 0:
        files = files[: args.limit]
    if not files:
        raise ValueError("no images to check")
    return [(path, read_image(path, format="RGB")) for path in files]


def check(args: argparse.Namespace) -> bool:
    """Compare the exported files with the PyTorch model; print the table; True when every
    file is within the tolerance."""
    formats = FORMATS if args.format == "both" else (args.format,)
    segmenters, info = load_segmenters(args.output, formats, batch_size=args.batch_size)
    cfg = setup_cfg(args, info["window"], info["stride"])
    model, loaded = build_inference_model(cfg)
    if loaded != info["weights"]:
        logger.warning(
            "the export holds the %s weights, the model here the %s", info["weights"], loaded
        )
    model.set_inference_classes(info["class_names"], info.get("class_descriptions"))
    images = check_images(args, cfg)
    logger.info("Checking %s on %d images", ", ".join(segmenters), len(images))
    stats = hx.compare_with_model(model, images, segmenters)
    print(
        f"tolerance: max |score difference| <= {args.atol:g}, "
        f"label agreement >= {100 * args.min_agreement:.2f} %"
    )
    print(f"{'file':<12} {'images':>6} {'pixels':>10} {'max |diff|':>11} {'agreement':>10}  result")
    ok = True
    for fmt, entry in stats.items():
        passed = entry["max_abs_diff"] <= args.atol and entry["agreement"] >= args.min_agreement
        ok &= passed
        print(
            f"{FILE_NAMES[fmt]:<12} {entry['images']:>6} {entry['pixels']:>10} "
            f"{entry['max_abs_diff']:>11.3e} {100 * entry['agreement']:>9.3f}%  "
            f"{'ok' if passed else 'FAILED'}"
        )
    return ok


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    if args.check:
        return 0 if check(args) else 1
    export(args)
    return 0


if __name__ == "__main__":
    setup_logger(name="hiervl")
    sys.exit(main())
