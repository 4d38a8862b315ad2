#!/usr/bin/env python
"""The language side of a HierVL prediction, as one picture per image.

Panels (matplotlib, Agg):

- the image and the predicted segmentation (``Visualizer.draw_sem_seg``);
- the semantic relevance scores ``r_c = σ(α cos(g, t_c) + β)`` of every class as a bar chart,
  with the threshold ``τ_rel`` below which a class's query rows are masked out of attention
  (ground-truth classes marked ``*`` when the image belongs to ``--dataset`` and is labelled);
- for the ``--top-k`` most relevant classes: the last CMSAM block's pixel → text attention of
  the class's query rows (mean over its ``E`` hierarchy levels and the attention heads, as a
  density over the image: all feature levels summed, each scaled by its token count);
- for the same classes: the decoder's predicted mask of the class rows (``σ(m_k)``, mean over
  the ``E`` rows).

The model runs once, through its own ``inference`` (no TTA, no sliding window: the image is
resized to fit one ``MODEL.HIERVL.TEST.CROP_SIZE`` window); forward hooks read the HSQG output,
ask the pixel decoder for its attention (``return_attn=True``) and keep the decoder's masks.

Example::

    python tools/visualize_relevance.py --config-file configs/demo/hiervl_demo.yaml \\
        --input image.png --output vis/ --opts MODEL.WEIGHTS output/model_final.pth
"""
import argparse
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import hiervl.data  # noqa: E402,F401  (registers the built-in datasets)
import hiervl.hiervl_model  # noqa: E402,F401  (registers the HierVL META_ARCH)
from hiervl.config import load_config  # noqa: E402
from hiervl.data.image_io import load_semseg_mask  # noqa: E402
from hiervl.evaluation.visualization import (  # noqa: E402
    default_dataset,
    draw_semseg,
    find_dataset_record,
    labels_and_confidence,
    metadata_of,
)
from hiervl.utils.checkpoint import load_inference_weights  # noqa: E402

logger = logging.getLogger("hiervl.visualize_relevance")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Relevance scores and class-query attention")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="model config")
    parser.add_argument("--input", nargs="+", required=True, help="image files")
    parser.add_argument("--output", required=True, help="folder for the pictures")
    parser.add_argument(
        "--dataset",
        default="",
        help="registered split for class colours and ground-truth classes "
        "(default: DATASETS.TEST[0], else DATASETS.TRAIN[0])",
    )
    parser.add_argument("--top-k", type=int, default=3, help="classes whose maps are drawn")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, help="config overrides: KEY VALUE pairs"
    )
    return parser


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    # One forward pass per image: the hooks below read the HSQG / decoder tensors of that pass.
    return load_config(
        args.config_file,
        list(args.opts) + ["TEST.AUG.ENABLED", False],
    )


class LanguageProbe:
    """Runs ``model.inference`` once and records the HSQG output, the last CMSAM pixel → text
    attention and the decoder's outputs through forward hooks (the model is not modified)."""

    def __init__(self, model: torch.nn.Module):
        """
        Args:
            model: a HierVL model with an HSQG (class queries).
        """
        if model.hsqg is None:
            raise ValueError("This model has no HSQG (MODEL.HIERVL.HSQG off): no class queries")
        self.model = model
        self.records: Dict[str, List] = {}

    def _pre_pixel_decoder(self, module, args, kwargs):
        return args, {**kwargs, "return_attn": True}

    def _post_pixel_decoder(self, module, args, kwargs, output):
        self.records.setdefault("attn", []).append(output[3])
        return output[:3]

    def _record(self, key):
        def hook(module, args, output):
            self.records.setdefault(key, []).append(output)

        return hook

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Dict[str, torch.Tensor]:
        """
        Args:
            image: ``[H, W, 3]`` uint8 RGB that fits one test window.

        Returns:
            ``sem_seg [C, H, W]``, ``relevance [C]``, ``row_class [C*E]``, ``keep [C*E]``,
            ``attention [C*E, H, W]`` (density, or None when no CMSAM block ran) and
            ``class_masks [C*E, H, W]`` (None when the decoder has no class rows), on the CPU.
        """
        self.records = {}
        model = self.model
        handles = [
            model.pixel_decoder.register_forward_pre_hook(
                self._pre_pixel_decoder, with_kwargs=True
            ),
            model.pixel_decoder.register_forward_hook(self._post_pixel_decoder, with_kwargs=True),
            model.hsqg.register_forward_hook(self._record("hsqg")),
            model.decoder.register_forward_hook(self._record("decoder")),
        ]
        try:
            height, width = image.shape[:2]
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
            result = model.inference([{"image": tensor, "height": height, "width": width}])[0]
        finally:
            for handle in handles:
                handle.remove()
        if len(self.records.get("hsqg", [])) != 1:
            raise RuntimeError("Expected one forward pass; the image must fit one test window")
        hs = self.records["hsqg"][0]
        num_rows = hs["row_class"].numel()
        out = {
            "sem_seg": result["sem_seg"].cpu(),
            "relevance": hs["relevance"][0].float().cpu(),
            "row_class": hs["row_class"].cpu(),
            "keep": hs["keep"][0].cpu(),
            "attention": None,
            "class_masks": None,
        }
        attn = self.records["attn"][0]
        if attn is not None:
            out["attention"] = self._density(attn, height, width)
        if model.class_queries:
            masks = self.records["decoder"][0]["pred_masks"][0, :num_rows].float().sigmoid()
            out["class_masks"] = self._to_image(masks, height, width)
        return out

    def _to_image(self, maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``[Q, h, w]`` maps on the padded grid → ``[Q, H, W]`` on the image (CPU)."""
        div = self.model.size_divisibility
        padded = (height + (-height) % div, width + (-width) % div)
        maps = F.interpolate(maps[None], size=padded, mode="bilinear", align_corners=False)[0]
        return maps[:, :height, :width].cpu()

    def _density(self, attn: List[torch.Tensor], height: int, width: int) -> torch.Tensor:
        """Per-level attention ``[1, Q, h_l, w_l]`` (summing to 1 over all levels) → density
        ``[Q, H, W]``: each level's weights times its token count, upsampled and summed."""
        total = None
        for level in attn:
            h, w = level.shape[-2:]
            density = self._to_image(level[0].float() * (h * w), height, width)
            total = density if total is None else total + density
        return total


def fit_to_window(image: np.ndarray, crop_size: Sequence[int]) -> np.ndarray:
    """Shrink ``[H, W, 3]`` (keeping its aspect) so it fits one ``crop_size`` window."""
    height, width = image.shape[:2]
    scale = min(crop_size[0] / height, crop_size[1] / width, 1.0)
    if scale == 1.0:
        return image
    size = (max(int(round(height * scale)), 1), max(int(round(width * scale)), 1))
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()
    resized = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return resized[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def draw_figure(
    image: np.ndarray,
    probe: Dict[str, torch.Tensor],
    metadata,
    *,
    top_k: int,
    threshold: float,
    gt_classes: Optional[set] = None,
):
    """Build the matplotlib figure of one image (see the module docstring)."""
    names = list(metadata.stuff_classes)
    colors = getattr(metadata, "stuff_colors", None) or [(80, 120, 200)] * len(names)
    relevance = probe["relevance"].numpy()
    order = np.argsort(-relevance)[:top_k]
    rows = 1 + (probe["attention"] is not None) + (probe["class_masks"] is not None)
    cols = max(top_k, 3)
    fig = plt.figure(figsize=(3.2 * cols, 3.0 * rows + 0.6), dpi=100)
    grid = fig.add_gridspec(rows, cols)

    labels, _ = labels_and_confidence(probe["sem_seg"])
    ax = fig.add_subplot(grid[0, 0])
    ax.imshow(image)
    ax.set_title("image")
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 1])
    ax.imshow(draw_semseg(image, labels, metadata))
    ax.set_title("prediction")
    ax.axis("off")

    ax = fig.add_subplot(grid[0, 2:] if cols > 3 else grid[0, 2])
    ticks = [f"{n}*" if gt_classes and i in gt_classes else n for i, n in enumerate(names)]
    ax.bar(
        range(len(names)),
        relevance,
        color=[tuple(v / 255 for v in c) for c in colors],
        edgecolor="black",
        linewidth=0.5,
    )
    ax.axhline(threshold, color="red", linestyle="--", linewidth=1, label=f"τ_rel = {threshold:g}")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(ticks, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("relevance r_c")
    title = "relevance (* = in ground truth)" if gt_classes is not None else "relevance"
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")

    row = 1
    for key, label, cmap in (
        ("attention", "CMSAM pixel→text attention", "inferno"),
        ("class_masks", "decoder class-row mask", "viridis"),
    ):
        maps = probe[key]
        if maps is None:
            continue
        for j, c in enumerate(order):
            rows_c = probe["row_class"] == int(c)
            heat = maps[rows_c].mean(dim=0).numpy()
            ax = fig.add_subplot(grid[row, j])
            ax.imshow(image)
            ax.imshow(heat, cmap=cmap, alpha=0.6)
            kept = bool(probe["keep"][rows_c].any())
            ax.set_title(
                f"{names[c]} r={relevance[c]:.2f}{'' if kept else ' (masked)'}", fontsize=9
            )
            ax.set_xlabel(label, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row += 1
    fig.tight_layout()
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    cfg = setup_cfg(args)
    dataset = args.dataset or default_dataset(cfg)
    metadata = metadata_of(dataset)
    model = build_model(cfg)
    model.eval()
    which = load_inference_weights(
        model, cfg.MODEL.WEIGHTS, use_teacher=cfg.MODEL.HIERVL.TEST.USE_TEACHER
    )
    if len(metadata.stuff_classes) != model.num_classes:
        raise ValueError(
            f"{dataset} has {len(metadata.stuff_classes)} classes, the model {model.num_classes}"
        )
    probe = LanguageProbe(model)
    os.makedirs(args.output, exist_ok=True)
    logger.info("Relevance pictures with the %s weights", which)
    failures = []
    for path in args.input:
        try:
            image = np.asarray(read_image(path, format="RGB"))
        except (OSError, ValueError) as e:
            logger.error("Cannot read image %s: %s", path, e)
            failures.append(path)
            continue
        gt_classes = None
        record = find_dataset_record(path, dataset)
        if record is not None and "sem_seg_file_name" in record:
            gt = load_semseg_mask(record["sem_seg_file_name"])
            gt_classes = {int(c) for c in np.unique(gt) if c < len(metadata.stuff_classes)}
        small = fit_to_window(image, cfg.MODEL.HIERVL.TEST.CROP_SIZE)
        result = probe(small)
        fig = draw_figure(
            small,
            result,
            metadata,
            top_k=min(args.top_k, len(metadata.stuff_classes)),
            threshold=model.hsqg.relevance_threshold,
            gt_classes=gt_classes,
        )
        name = os.path.splitext(os.path.basename(path))[0] + "_relevance.png"
        fig.savefig(os.path.join(args.output, name))
        plt.close(fig)
        top = ", ".join(
            f"{metadata.stuff_classes[c]} {result['relevance'][c]:.2f}"
            for c in torch.argsort(result["relevance"], descending=True)[: args.top_k].tolist()
        )
        logger.info("%s: top relevance %s", name, top)
    return 1 if failures else 0


if __name__ == "__main__":
    setup_logger(name="hiervl")
    sys.exit(main())
