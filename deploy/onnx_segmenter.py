#!/usr/bin/env python
"""Run an exported HierVL model with ONNX Runtime: numpy and onnxruntime only.

``tools/export_model.py`` writes ``hiervl.onnx``: one inference window of a trained HierVL
(normalised images ``[B, 3, h, w]`` -> class scores ``[B, C, h, w]`` and their argmax), with the
class names, colours, pixel mean / std, window size and stride in its metadata. This file is
the rest of HierVL's inference, without HierVL: copy it next to ``hiervl.onnx`` on a machine
that has neither this repository nor detectron2 / open_clip / torch::

    pip install numpy onnxruntime pillow        # pillow: only to read and write image files
    python onnx_segmenter.py hiervl.onnx --input photos/ --output masks/

Steps (those of ``HierVL.inference`` outside the exported graph):

1. the ``[H, W, 3]`` uint8 RGB image is normalised with the model's pixel mean / std;
2. windows of the exported size are placed at the model's stride
   (``MODEL.HIERVL.TEST.STRIDE``), on the same corners as HierVL's sliding window; a window
   that sticks out of an image smaller than the window is zero-padded (zero is the mean colour
   after normalisation);
3. the windows run in batches; their scores are averaged where windows overlap and the label
   of a pixel is the argmax over classes.

Not done here: test-time flips and scales (``TEST.AUG``) and
detectron2's test-time resize (``INPUT.MIN_SIZE_TEST``; HierVL's configs keep images at their
own size).

From Python::

    from onnx_segmenter import OnnxSegmenter
    segmenter = OnnxSegmenter("hiervl.onnx")
    scores, labels = segmenter(image)   # [H, W, 3] uint8 RGB -> [C, H, W] float32, [H, W] int64
    segmenter.class_names[labels[0, 0]]

``SlidingWindowSegmenter`` takes any function that runs a batch of windows (the
``torch.export`` program of the same export, for instance).
"""

import argparse
import json
import logging
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "METADATA_KEY",
    "IMAGE_EXTENSIONS",
    "OnnxSegmenter",
    "SlidingWindowSegmenter",
    "normalise",
    "sliding_window_scores",
    "window_corners",
]

logger = logging.getLogger("onnx_segmenter")

# Key of the JSON deployment metadata in the ONNX model's metadata_props.
METADATA_KEY = "hiervl"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

RunWindows = Callable[[np.ndarray], np.ndarray]


def window_corners(
    height: int, width: int, window: Sequence[int], stride: Sequence[int]
) -> List[Tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the windows covering an ``height x width`` image.

    The last row / column of windows is moved back to end at the image's border (HierVL's
    ``hiervl.modeling.inference.window_corners``); an image no larger than one window gets the
    single corner ``(0, 0)``.
    """
    (win_h, win_w), (step_h, step_w) = window, stride
    rows = max(-(-(height - win_h) // step_h), 0) + 1
    cols = max(-(-(width - win_w) // step_w), 0) + 1
    return [
        (max(min(r * step_h, height - win_h), 0), max(min(c * step_w, width - win_w), 0))
        for r in range(rows)
        for c in range(cols)
    ]


def normalise(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], input_format: str = "RGB"
) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB -> ``[3, H, W]`` float32 ``(x - mean) / std`` in the channel
    order the model was trained with (``input_format``: ``"RGB"`` or ``"BGR"``)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] image, got shape {image.shape}")
    if input_format == "BGR":
        image = image[:, :, ::-1]
    elif input_format != "RGB":
        raise ValueError(f"input format must be RGB or BGR, got {input_format!r}")
    chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
    return (chw - mean) / std


def sliding_window_scores(
    image: np.ndarray,
    run_windows: RunWindows,
    *,
    window: Sequence[int],
    stride: Sequence[int],
    batch_size: int = 4,
) -> np.ndarray:
    """Class scores of a normalised image, window by window.

    Args:
        image: ``[3, H, W]`` float32, normalised.
        run_windows: ``[N, 3, h, w]`` float32 windows -> ``[N, C, h, w]`` scores.
        window: ``(h, w)`` of the windows (the exported input size).
        stride: ``(h, w)`` step between windows.
        batch_size: windows per call of ``run_windows``.

    Returns:
        ``[C, H, W]`` float32: the mean of the scores of the windows covering each pixel.
    """
    _, height, width = image.shape
    win_h, win_w = window
    corners = window_corners(height, width, window, stride)
    total: Optional[np.ndarray] = None
    count = np.zeros((1, height, width), dtype=np.float32)
    for start in range(0, len(corners), max(int(batch_size), 1)):
        chunk = corners[start : start + max(int(batch_size), 1)]
        batch = np.zeros((len(chunk), 3, win_h, win_w), dtype=np.float32)
        for i, (y, x) in enumerate(chunk):
            crop = image[:, y : y + win_h, x : x + win_w]
            batch[i, :, : crop.shape[1], : crop.shape[2]] = crop
        scores = np.asarray(run_windows(batch), dtype=np.float32)
        if total is None:
            total = np.zeros((scores.shape[1], height, width), dtype=np.float32)
        for (y, x), score in zip(chunk, scores):
            h, w = min(win_h, height - y), min(win_w, width - x)
            total[:, y : y + h, x : x + w] += score[:, :h, :w]
            count[:, y : y + h, x : x + w] += 1
    return total / np.maximum(count, 1)


class SlidingWindowSegmenter:
    """Sliding-window segmentation of RGB images with a function that runs a batch of windows.

    Attributes:
        info: the deployment metadata (``class_names``, ``class_colors``, ``pixel_mean``,
            ``pixel_std``, ``input_format``, ``window``, ``stride``).
        class_names: the ``C`` class names; label ``c`` is ``class_names[c]``.
    """

    def __init__(self, run_windows: RunWindows, info: Dict, *, batch_size: int = 4):
        """
        Args:
            run_windows: ``[N, 3, h, w]`` normalised float32 windows -> ``[N, C, h, w]`` scores.
            info: the deployment metadata written by ``tools/export_model.py``.
            batch_size: windows per call of ``run_windows``.
        """
        missing = [
            k
            for k in ("class_names", "pixel_mean", "pixel_std", "window", "stride")
            if k not in info
        ]
        if missing:
            raise ValueError(f"deployment metadata lacks {missing}")
        self.run_windows = run_windows
        self.info = dict(info)
        self.class_names = list(info["class_names"])
        self.window = tuple(int(s) for s in info["window"])
        self.stride = tuple(int(s) for s in info["stride"])
        self.batch_size = batch_size

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """
        Args:
            image: ``[H, W, 3]`` uint8 RGB.

        Returns:
            scores ``[C, H, W]`` float32 (HierVL's ``sem_seg``, not normalised over classes) and
            labels ``[H, W]`` int64 (their argmax).
        """
        normalised = normalise(
            image,
            self.info["pixel_mean"],
            self.info["pixel_std"],
            self.info.get("input_format", "RGB"),
        )
        scores = sliding_window_scores(
            normalised,
            self.run_windows,
            window=self.window,
            stride=self.stride,
            batch_size=self.batch_size,
        )
        return scores, scores.argmax(axis=0)


class OnnxSegmenter(SlidingWindowSegmenter):
    """``SlidingWindowSegmenter`` over an exported ``hiervl.onnx`` in ONNX Runtime."""

    def __init__(
        self,
        model_path: str,
        *,
        threads: int = 0,
        batch_size: int = 4,
        providers: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            model_path: the ``.onnx`` file written by ``tools/export_model.py``.
            threads: ONNX Runtime intra-op threads (0: its default, one per core).
            batch_size: windows per run.
            providers: ONNX Runtime execution providers (default: the CPU).
        """
        import onnxruntime as ort

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"ONNX model not found: {model_path}")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            model_path,
            sess_options=options,
            providers=list(providers or ["CPUExecutionProvider"]),
        )
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise ValueError(
                f"{model_path}: no {METADATA_KEY!r} metadata; export the model with "
                f"tools/export_model.py"
            )
        self.input_name = self.session.get_inputs()[0].name
        super().__init__(self._run_session, json.loads(meta[METADATA_KEY]), batch_size=batch_size)

    def _run_session(self, windows: np.ndarray) -> np.ndarray:
        return self.session.run(["scores"], {self.input_name: windows})[0]


def _palette(info: Dict) -> List[int]:
    colors = info.get("class_colors") or []
    flat: List[int] = []
    for c in range(256):
        if c < len(colors):
            flat += [int(v) for v in colors[c]]
        else:
            # Classes without a colour: fixed, well-spread colours.
            flat += [(c * 97) % 256, (c * 57 + 80) % 256, (c * 151 + 160) % 256]
    return flat


def _inputs(paths: Sequence[str]) -> List[str]:
    files: List[str] = []
    for path in paths:
        if os.path.isdir(path):
            files += sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        else:
            files.append(path)
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: label maps of images or folders as palette PNGs (exit 1 on unreadable
    inputs, which are reported and skipped)."""
    parser = argparse.ArgumentParser(description="HierVL segmentation with ONNX Runtime")
    parser.add_argument("model", help="hiervl.onnx written by tools/export_model.py")
    parser.add_argument("--input", nargs="+", required=True, help="image files or folders")
    parser.add_argument(
        "--output",
        required=True,
        help="folder for <image stem>.png: label ids as palette indices, the class colours",
    )
    parser.add_argument("--threads", type=int, default=0, help="0: ONNX Runtime's default")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from PIL import Image, ImageOps

    segmenter = OnnxSegmenter(args.model, threads=args.threads, batch_size=args.batch_size)
    if len(segmenter.class_names) > 256:
        raise ValueError("palette PNGs hold at most 256 classes")
    os.makedirs(args.output, exist_ok=True)
    palette = _palette(segmenter.info)
    files = _inputs(args.input)
    failed = 0
    for path in files:
        try:
            with Image.open(path) as img:
                image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        except OSError as err:
            logger.error("skipped %s: %s", path, err)
            failed += 1
            continue
        _, labels = segmenter(image)
        out = Image.fromarray(labels.astype(np.uint8))
        out.putpalette(palette)  # an "L" image with a palette becomes a "P" image
        stem = os.path.splitext(os.path.basename(path))[0]
        out.save(os.path.join(args.output, stem + ".png"))
        present = [segmenter.class_names[c] for c in np.unique(labels)]
        logger.info("%s: %s", path, ", ".join(present))
    logger.info("%d of %d images written to %s", len(files) - failed, len(files), args.output)
    return 1 if failed or not files else 0


if __name__ == "__main__":
    sys.exit(main())
