"""HierVL demo: semantic segmentation overlays for images, a folder, a glob or a split.

Examples::

    python demo/demo.py --config-file configs/demo/hiervl_demo.yaml \\
        --input photos/*.jpg --output out/ --opts MODEL.WEIGHTS output/model_final.pth
    python demo/demo.py --config-file ... --dataset hiervl_demo_val --limit 8 --show-gt \\
        --output out/ --opts MODEL.WEIGHTS output/model_final.pth
    python demo/demo.py --config-file ... --input photos/ --classes "sky,road,car,person" \\
        --output out/ --opts MODEL.WEIGHTS output/model_final.pth

One PNG per input is written to ``--output`` (``<input stem>.png``), of the input's size; with
``--show-gt`` it is ``[prediction | ground truth]``, twice the input's width, the ground truth
taken from ``--dataset`` (the right panel is the plain image for inputs not in that split),
each half under a caption. ``--classes`` / ``--classes-file`` make the model predict over other
class names (README, "New class names at inference").
The weights are the EMA teacher's when the checkpoint holds a teacher (unless
``MODEL.HIERVL.TEST.USE_TEACHER False``). Inputs of any size >= 1 px are drawn. Unreadable inputs
(and, with ``--show-gt``, an unreadable mask or a mask of another size) are reported by name and
skipped; the exit status is then 1.
"""

import argparse
import glob
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.utils.logger import setup_logger
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import VisualizationDemo  # noqa: E402

import hiervl.data  # noqa: E402,F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: E402,F401  (registers the HierVL META_ARCH)
from hiervl.config import load_config  # noqa: E402
from hiervl.data.image_io import load_semseg_mask, read_image  # noqa: E402
from hiervl.data.datasets.folder import read_classes  # noqa: E402
from hiervl.evaluation.visualization import (  # noqa: E402
    default_dataset,
    find_dataset_record,
    metadata_of,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

logger = logging.getLogger("hiervl.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="HierVL semantic segmentation demo")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        help="image files, folders (their images, sorted) or glob patterns; "
        "default: the images of --dataset",
    )
    parser.add_argument("--output", required=True, help="folder for the PNG overlays")
    parser.add_argument(
        "--dataset",
        default="",
        help="registered split for metadata, --show-gt and input-less runs "
        "(default: DATASETS.TEST[0], else DATASETS.TRAIN[0])",
    )
    parser.add_argument(
        "--show-gt",
        action="store_true",
        help="draw [prediction | ground truth] side by side (2x wide), ground truth from --dataset",
    )
    parser.add_argument(
        "--confidence",
        type=float,
        default=0.0,
        help="leave pixels whose normalised top class score is below this undrawn (0..1)",
    )
    parser.add_argument("--alpha", type=float, default=0.6, help="overlay opacity")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes",
        default="",
        help="comma-separated class names to predict over instead of the training classes, "
        'e.g. "sky,road,car,person"',
    )
    classes.add_argument(
        "--classes-file",
        default="",
        metavar="FILE",
        help="class names to predict over, one per line (a folder dataset's classes.txt: "
        "optional TAB-separated descriptions after the name)",
    )
    parser.add_argument("--limit", type=int, default=0, help="at most this many inputs (0 = all)")
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth",
    )
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    return load_config(args.config_file, args.opts)


def class_names_of(args: argparse.Namespace) -> Tuple[Optional[List[str]], Optional[List]]:
    """``(names, descriptions)`` of ``--classes`` / ``--classes-file``; ``(None, None)``
    without either."""
    if args.classes_file:
        return read_classes(args.classes_file)
    if args.classes:
        return [n.strip() for n in args.classes.split(",")], None
    return None, None


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Files, folders and glob patterns → a list of paths (missing files kept, to be reported)."""
    paths: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                logger.warning("No images in folder %s", pattern)
            paths.extend(found)
        elif glob.has_magic(pattern):
            found = sorted(glob.glob(os.path.expanduser(pattern)))
            if not found:
                logger.warning("No file matches %s", pattern)
            paths.extend(found)
        else:
            paths.append(pattern)
    return paths


def output_names(paths: Sequence[str]) -> List[str]:
    """``<stem>.png`` per input, ``<stem>_<k>.png`` when stems repeat."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}.png" if count == 0 else f"{stem}_{count}.png")
    return names


def ground_truth(path: str, dataset: str, image_hw) -> Optional[np.ndarray]:
    """The mask of ``path`` in ``dataset`` (None when it is not a labelled image of it).

    Raises:
        OSError: the mask cannot be read (the message names it).
        ValueError: the mask is not of the image's size ``image_hw`` ``(H, W)``.
    """
    record = find_dataset_record(path, dataset)
    if record is None or "sem_seg_file_name" not in record:
        logger.warning("%s is not a labelled image of %s: no ground truth", path, dataset)
        return None
    gt = load_semseg_mask(record["sem_seg_file_name"])
    if gt.shape != tuple(image_hw):
        raise ValueError(
            f"its mask {record['sem_seg_file_name']} is {gt.shape[1]}x{gt.shape[0]} (WxH), the "
            f"image {image_hw[1]}x{image_hw[0]}; a mask must have its image's size"
        )
    return gt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = setup_cfg(args)
    dataset = args.dataset or default_dataset(cfg)
    metadata = metadata_of(dataset)

    if args.input:
        paths = expand_inputs(args.input)
    else:
        paths = [record["file_name"] for record in DatasetCatalog.get(dataset)]
    if args.limit > 0:
        paths = paths[: args.limit]
    if not paths:
        logger.error("No inputs.")
        return 1
    if args.show_gt and not getattr(metadata, "labeled", True):
        logger.warning("%s is unlabelled: --show-gt draws the plain image on the right", dataset)

    class_names, class_descriptions = class_names_of(args)
    demo = VisualizationDemo(
        cfg,
        metadata=metadata,
        confidence_threshold=args.confidence,
        alpha=args.alpha,
        show_gt=args.show_gt,
        class_names=class_names,
        class_descriptions=class_descriptions,
    )
    logger.info("Running on %d input(s) with the %s weights", len(paths), demo.predictor.loaded)
    os.makedirs(args.output, exist_ok=True)
    failures = []
    for path, name in tqdm(list(zip(paths, output_names(paths))), desc="demo", unit="img"):
        try:
            image = read_image(path, format="RGB")
            gt = ground_truth(path, dataset, image.shape[:2]) if args.show_gt else None
        except (OSError, ValueError) as e:
            logger.error("Skipping %s: %s", path, e)
            failures.append(path)
            continue
        _, picture = demo.run_on_image(np.asarray(image), gt)
        Image.fromarray(picture).save(os.path.join(args.output, name))
    written = len(paths) - len(failures)
    logger.info("Wrote %d picture(s) to %s", written, args.output)
    if failures:
        logger.error("%d input(s) skipped: %s", len(failures), ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    setup_logger(name="hiervl")
    setup_logger(name="fvcore")
    sys.exit(main())
