#!/usr/bin/env python
"""Time HierVL's sliding-window evaluation on synthetic VOC-sized images.

The model is the config's META_ARCH (random init) in eval mode; each image runs through
``model([{"image", "height", "width"}])`` one at a time, as detectron2's test loader feeds it,
and its ``sem_seg`` is reduced to labels on the host (``argmax(0).cpu()``), as
``SemSegEvaluator.process`` does. Windows and stride come from ``MODEL.HIERVL.TEST``; the images
alternate between the sizes of ``--sizes`` (VOC val: mostly 500 px on the long side).

Printed: images/s, the seconds projected for the 1,449 VOC val images, the per-image median,
peak GPU memory (``torch.cuda.max_memory_allocated``, reset after the warm-up), device, dtype
and MSDeformAttn path. The evaluator's confusion-matrix update (numpy, on the host) and image
decoding are not included.

    python tools/benchmark_eval.py                       # VOC config, fp32 as trainer.test runs
    python tools/benchmark_eval.py --amp bf16            # inference under bf16 autocast
    python tools/benchmark_eval.py --smoke               # CPU, tiny model, seconds
"""
import argparse
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.modeling import build_model

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark_common as bm  # noqa: E402  (tools/benchmark_common.py)
from hiervl.modeling.inference import window_corners  # noqa: E402

VOC_VAL_IMAGES = 1449
SMOKE = {
    "device": "cpu",
    "tiny": True,
    "sizes": "75x100,100x75",
    "images": 2,
    "warmup": 1,
}


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    """``"375x500,500x375"`` → ``[(375, 500), (500, 375)]`` (height x width)."""
    sizes = []
    for item in text.split(","):
        h, w = item.lower().split("x")
        sizes.append((int(h), int(w)))
    return sizes


def num_windows(height: int, width: int, crop: Tuple[int, int], stride: Tuple[int, int]) -> int:
    """Sliding windows of one image (1 when it fits in one crop), as ``MODEL.HIERVL.TEST``
    places them."""
    return len(window_corners(height, width, crop, stride))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", choices=bm.VARIANTS, default="hiervl")
    p.add_argument("--config-file", default="configs/voc/hiervl_92.yaml")
    p.add_argument("--sizes", default="375x500,500x375", help="HxW[,HxW...], used in turn")
    p.add_argument("--images", type=int, default=100, help="timed images")
    p.add_argument("--warmup", type=int, default=5, help="untimed images before")
    p.add_argument(
        "--amp",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32: the evaluation path as trainer.test runs it; bf16: under torch.autocast",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny test config instead of the file")
    p.add_argument("--smoke", action="store_true", help="CPU smoke: " + str(SMOKE))
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... (last)")
    args = p.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, str]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    cfg = bm.build_config(
        variant=args.variant,
        config_file=args.config_file,
        tiny=args.tiny,
        device=str(device),
        settings=[("MODEL.HIERVL.CLIP.PRETRAINED", "")],
        opts=args.opts,
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    model.eval()
    sizes = parse_sizes(args.sizes)
    gen = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8) for h, w in sizes]
    counter = {"i": 0}

    def evaluate_one():
        image = images[counter["i"] % len(images)]
        counter["i"] += 1
        inputs = [{"image": image, "height": image.shape[1], "width": image.shape[2]}]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            outputs = model(inputs)
        return outputs[0]["sem_seg"].argmax(dim=0).cpu()

    test = cfg.MODEL.HIERVL.TEST
    crop, stride = tuple(test.CROP_SIZE), tuple(test.STRIDE)
    with torch.no_grad(), bm.capture_msda_path() as msda:
        bm.timed(evaluate_one, device, args.warmup)
        bm.reset_peak_memory(device)
        times = bm.timed(evaluate_one, device, args.images)
        memory = bm.peak_memory(device)

    total = sum(times)
    ips = len(times) / total
    windows = ", ".join(f"{h}x{w}: {num_windows(h, w, crop, stride)}" for h, w in sizes)
    aug = cfg.TEST.AUG
    tta = (
        f"TTA shortest edges {list(aug.MIN_SIZES)} (max {aug.MAX_SIZE}), flip {aug.FLIP}"
        if aug.ENABLED
        else "no TTA"
    )
    figures = {
        "config": "tiny_config (hiervl.utils.testing)" if args.tiny else args.config_file,
        "device": bm.device_description(device),
        "dtype": "bf16 autocast (benchmark wrapper)" if args.amp == "bf16" else "fp32",
        "msdeformattn": msda["path"],
        "images": f"{args.warmup} warm-up + {args.images} timed, sizes {args.sizes} (HxW)",
        "sliding window": f"crop {crop[0]}x{crop[1]}, stride {stride[0]}x{stride[1]}, "
        f"windows/image {windows}; {tta}",
        "per image (median)": f"{bm.median(times) * 1e3:.1f} ms",
        "images/s": f"{ips:.2f}",
        f"{VOC_VAL_IMAGES} images": f"{VOC_VAL_IMAGES / ips:.1f} s projected",
        "peak memory": memory,
    }
    print(bm.format_table("HierVL sliding-window evaluation benchmark", list(figures.items())))
    return figures


if __name__ == "__main__":
    main()
