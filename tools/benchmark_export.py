#!/usr/bin/env python
"""CPU images/s of a HierVL export: PyTorch eager vs ONNX Runtime vs the torch.export program.

The three run the same images (the split of ``--dataset``, default ``DATASETS.TEST[0]``, or
``--input``), read into memory first, one image at a time, each over the whole image:

- ``pytorch eager``: ``HierVL.inference`` of the model built from the config and
  ``MODEL.WEIGHTS`` (its own sliding window, no test-time augmentation, as the export);
- ``onnxruntime``: ``deploy/onnx_segmenter.py``'s ``OnnxSegmenter`` over ``hiervl.onnx``;
- ``torch.export``: the same sliding window over ``hiervl.pt2`` (``ExportedProgram.module()``).

The two exported paths include the wrapper's numpy normalisation, windows and averaging; all
three include the argmax. Each path runs ``--warmup`` untimed images, then one timed pass over
the images. Printed: images/s, milliseconds per image, the ratio to eager, the CPU, the
threads and the versions.

    python tools/benchmark_export.py --config-file configs/demo/hiervl_demo.yaml \\
        --export export/demo --threads 1 MODEL.WEIGHTS output/demo/model_final.pth
"""
import argparse
import os
import platform
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import export_model  # noqa: E402  (tools/export_model.py: config, model, exported files)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    p.add_argument("--export", required=True, help="folder of hiervl.onnx and hiervl.pt2")
    p.add_argument(
        "--input", action="append", default=[], help="an image file or folder (repeatable)"
    )
    p.add_argument("--dataset", default="", help="registered split (default DATASETS.TEST[0])")
    p.add_argument("--limit", type=int, default=0, help="at most N images (0 = all)")
    p.add_argument("--warmup", type=int, default=2, help="untimed images per path")
    p.add_argument(
        "--threads", type=int, default=0, help="threads of torch and ONNX Runtime (0: torch's)"
    )
    p.add_argument("--batch-size", type=int, default=4, help="windows per run (exported paths)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config KEY VALUE pairs")
    return p


def time_path(
    run: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray], warmup: int
) -> float:
    """Seconds of one pass of ``run`` over ``images``, after ``warmup`` untimed images."""
    for image in list(images)[:warmup]:
        run(image)
    start = time.perf_counter()
    for image in images:
        run(image)
    return time.perf_counter() - start


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(seconds: Dict[str, float], count: int) -> List[str]:
    """The printed table: images/s, ms per image and the ratio to eager, per path."""
    eager = seconds["pytorch eager"]
    lines = [f"{'path':<15} {'images/s':>9} {'ms/image':>9} {'vs eager':>9}"]
    for name, secs in seconds.items():
        lines.append(
            f"{name:<15} {count / secs:>9.2f} {1000 * secs / count:>9.1f} {eager / secs:>8.2f}x"
        )
    return lines


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Dict[str, float], int]:
    args = get_parser().parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    segmenters, info = export_model.load_segmenters(
        args.export, export_model.FORMATS, batch_size=args.batch_size, threads=threads
    )
    cfg = export_model.setup_cfg(args, info["window"], info["stride"])
    model, _ = export_model.build_inference_model(cfg)
    model.set_inference_classes(info["class_names"], info.get("class_descriptions"))
    images = [image for _, image in export_model.check_images(args, cfg)]

    def eager(image: np.ndarray) -> np.ndarray:
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.no_grad():
            return model.inference([{"image": tensor}])[0]["sem_seg"].argmax(0).numpy()

    runs = {
        "pytorch eager": eager,
        "onnxruntime": lambda image: segmenters["onnx"](image)[1],
        "torch.export": lambda image: segmenters["pt2"](image)[1],
    }
    seconds = {name: time_path(run, images, args.warmup) for name, run in runs.items()}
    sizes = sorted({image.shape[:2] for image in images})
    print(
        f"{len(images)} images {', '.join(f'{h}x{w}' for h, w in sizes)}, window "
        f"{info['window'][0]}x{info['window'][1]}, stride {info['stride'][0]}x{info['stride'][1]}"
    )
    print(
        f"cpu: {cpu_name()}, {os.cpu_count()} cores, {threads} threads; torch "
        f"{torch.__version__}, onnxruntime {onnxruntime.__version__}"
    )
    for line in report(seconds, len(images)):
        print(line)
    return seconds, len(images)


if __name__ == "__main__":
    main()
