"""One inference window of a trained HierVL as a ``torch.export`` program and an ONNX graph.

``tools/export_model.py`` drives this module; ``deploy/onnx_segmenter.py`` runs its ONNX output
without HierVL. The exported graph is :class:`WindowSegmenter`: normalised images
``[B, 3, h, w]`` (``h x w`` fixed at export, the batch free) -> ``scores [B, C, h, w]``, the
semantic map ``S`` that ``HierVL.inference`` returns as ``sem_seg`` for one window, and
``labels [B, h, w]`` int64, their argmax.

Inside the graph: the CLIP image encoder (with its position embedding for the window's token
grid), HSQG with the class text embeddings computed at export time and stored as a constant,
the relevance gate (the ``keep`` mask of the class rows), the pixel decoder (MSDeformAttn's
reference path, one ``grid_sample`` per level, and the CMSAM blocks), the dual-query decoder,
the semantic map and its upsampling to the window size. Outside: reading and normalising
images, the sliding window and the averaging of overlapping windows (``deploy/``), test-time
flips and scales, and the text encoder (the class names are fixed at export: the model's
inference classes, ``HierVL.set_inference_classes``).

Both files come from one ``torch.export`` trace: the ``.pt2`` program is saved as it is and
converted to ONNX by ``torch.onnx``'s ``torch.export``-based exporter (``dynamo=True``, which
needs ``onnxscript``): one graph to check, and the exporter PyTorch develops. The
TorchScript-based exporter (``dynamo=False``) is faster but deprecated since PyTorch 2.9, and
in PyTorch 2.14 it cannot translate ``aten::_upsample_bicubic2d_aa`` (opset 17), the
antialiased resize that fits the ViT's position embedding to a window of another size than the
one CLIP was built for.
"""

import copy
import importlib.util
import json
import logging
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_OPSET",
    "METADATA_KEY",
    "PROGRAM_METADATA_FILE",
    "WindowSegmenter",
    "compare_with_model",
    "deployment_info",
    "export_onnx",
    "export_program",
    "load_program",
    "program_runner",
    "save_program",
    "window_text",
]

logger = logging.getLogger(__name__)

# ONNX opset of the export (GridSample needs >= 16; the torch.export-based exporter targets 18).
DEFAULT_OPSET = 18
# Key of the JSON deployment metadata in the ONNX model's metadata_props (the deploy wrapper
# reads the same key).
METADATA_KEY = "hiervl"
# Name of the same JSON inside the .pt2 archive (torch.export.save's extra_files).
PROGRAM_METADATA_FILE = "hiervl.json"


def _inference_view(model: nn.Module) -> nn.Module:
    """A shallow copy of a HierVL model without the parts inference never runs (the text
    encoder, the criterion, the anchor head of Eq. 4 and the frozen ViT copy of Eq. 6), so that
    the exported program does not carry their weights. Parameters are shared, not copied."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    for name in ("text_encoder", "criterion", "anchor_head"):
        if name in view._modules:
            view._modules[name] = None
    encoder = copy.copy(model.image_encoder)
    encoder._modules = dict(encoder._modules)
    if "frozen_visual" in encoder._modules:
        encoder._modules["frozen_visual"] = None
    view._modules["image_encoder"] = encoder
    return view


class WindowSegmenter(nn.Module):
    """HierVL's prediction on one window with the class text embeddings fixed: the exported
    graph.

    ``forward`` runs the model's window prediction (``HierVL.window_predictor``,
    :func:`hiervl.modeling.inference.predict_window`: padding to the size divisibility,
    encoder, HSQG and relevance gate, pixel decoder with CMSAM, decoder, semantic map at the
    input size), so the exported graph and the model's own inference share one implementation.
    """

    def __init__(self, model: nn.Module, text: torch.Tensor, source: Optional[torch.Tensor] = None):
        """
        Args:
            model: a HierVL model in eval mode (its weights are shared, not copied).
            text: ``[C, Dt]`` class text embeddings (``window_text``), stored as a buffer: a
                constant of the exported graph.
            source: ``[C]`` training class of each class (-1 for other names), None for the
                training classes (``predict_window``; ``window_text`` gives both).
        """
        super().__init__()
        if model.training:
            raise ValueError("WindowSegmenter needs the model in eval mode (model.eval())")
        self.model = _inference_view(model)
        self.register_buffer("text", text.detach().clone())
        self.source: Optional[torch.Tensor]
        if source is None:
            self.source = None
        else:
            self.register_buffer("source", source.detach().clone().long())

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            images: ``[B, 3, h, w]`` float32, normalised with PIXEL_MEAN / PIXEL_STD.

        Returns:
            ``scores [B, C, h, w]`` float32 (not normalised over classes) and
            ``labels [B, h, w]`` int64 (argmax over ``C``).
        """
        scores, _ = self.model.window_predictor(self.text, self.source)(images)
        return scores, scores.argmax(dim=1)


def deployment_info(
    model: nn.Module,
    *,
    class_names: Sequence[str],
    class_colors: Optional[Sequence[Sequence[int]]],
    class_descriptions: Optional[Sequence[Sequence[str]]] = None,
    window: Sequence[int],
    stride: Sequence[int],
    input_format: str,
    weights: str = "",
) -> Dict:
    """The JSON metadata stored with both exported files (what a deployment needs besides the
    graph).

    Args:
        model: the HierVL model (pixel mean / std are read from it).
        class_names: the ``C`` names the text embeddings were computed for.
        class_colors: ``C`` RGB colours, or None.
        class_descriptions: the description lists given with the names (None: the training
            classes' own), to compute the same embeddings again for a check.
        window: ``(h, w)`` of the exported input.
        stride: ``(h, w)`` step of the sliding window.
        input_format: ``"RGB"`` or ``"BGR"`` (``INPUT.FORMAT``).
        weights: which weights were exported (``"teacher"``, ``"student"``, ``"none"``).
    """
    return {
        "format": "hiervl-window/1",
        "class_names": [str(n) for n in class_names],
        "class_colors": None if class_colors is None else [list(map(int, c)) for c in class_colors],
        "class_descriptions": (
            None if class_descriptions is None else [list(map(str, d)) for d in class_descriptions]
        ),
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten()],
        "input_format": input_format,
        "window": [int(s) for s in window],
        "stride": [int(s) for s in stride],
        "weights": weights,
        "inputs": {"images": "[B, 3, h, w] float32, (RGB 0-255 - pixel_mean) / pixel_std"},
        "outputs": {
            "scores": "[B, C, h, w] float32 class scores (HierVL sem_seg)",
            "labels": "[B, h, w] int64 argmax of scores",
        },
    }


def export_program(
    window: WindowSegmenter, size: Sequence[int], *, max_batch: int = 1024
) -> torch.export.ExportedProgram:
    """``torch.export`` the window model for inputs ``[B, 3, size[0], size[1]]``, B free.

    Args:
        window: the model to export.
        size: ``(h, w)`` of the input windows.
        max_batch: largest batch the program accepts.
    """
    example = torch.zeros(2, 3, int(size[0]), int(size[1]), device=window.text.device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad():
        return torch.export.export(
            window, (example,), dynamic_shapes={"images": {0: batch}}, strict=False
        )


def save_program(program: torch.export.ExportedProgram, path: str, info: Dict) -> None:
    """Save the program as a ``.pt2`` archive with the deployment metadata inside."""
    torch.export.save(program, path, extra_files={PROGRAM_METADATA_FILE: json.dumps(info)})


def load_program(path: str) -> Tuple[torch.export.ExportedProgram, Dict]:
    """Load a ``.pt2`` written by :func:`save_program`: the program and its metadata."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"exported program not found: {path}")
    extra = {PROGRAM_METADATA_FILE: ""}
    program = torch.export.load(path, extra_files=extra)
    if not extra[PROGRAM_METADATA_FILE]:
        raise ValueError(f"{path}: no {PROGRAM_METADATA_FILE} inside; export with this tool")
    return program, json.loads(extra[PROGRAM_METADATA_FILE])


def export_onnx(
    program: torch.export.ExportedProgram, path: str, info: Dict, *, opset: int = DEFAULT_OPSET
) -> None:
    """Convert the program to ONNX (one file, weights inside, up to 1.5 GB) with the deployment
    metadata under ``METADATA_KEY``.

    Raises:
        ImportError: without ``onnx`` / ``onnxscript`` (``pip install .[export]``).
    """
    if opset < 17:
        raise ValueError(f"opset {opset} < 17 (GridSample needs 16, this export 17 or newer)")
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"the ONNX export needs {missing}: pip install '.[export]' (tools/setup_env.sh "
            f"installs it)"
        )
    example = torch.zeros(2, 3, *info["window"])
    onnx_program = torch.onnx.export(
        program,
        (example,),
        dynamo=True,
        opset_version=opset,
        input_names=["images"],
        output_names=["scores", "labels"],
        optimize=True,
    )
    onnx_program.model.metadata_props[METADATA_KEY] = json.dumps(info)
    onnx_program.save(path, external_data=False)


def program_runner(program: torch.export.ExportedProgram) -> Callable[[np.ndarray], np.ndarray]:
    """``[N, 3, h, w]`` float32 numpy windows -> ``[N, C, h, w]`` scores, through the
    program (the window runner of ``deploy``'s ``SlidingWindowSegmenter``)."""
    module = program.module()

    def run(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(windows)))[0].numpy()

    return run


def compare_with_model(
    model: nn.Module,
    images: Sequence[Tuple[str, np.ndarray]],
    segmenters: Dict[str, Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]],
) -> Dict[str, Dict[str, float]]:
    """Scores and labels of exported segmenters against the PyTorch model on the same images.

    The reference is ``HierVL.inference`` on the image at its own size: its sliding window,
    and test-time augmentation only when the model has it on (the export's check builds the
    model without).

    Args:
        model: the HierVL model in eval mode.
        images: ``(name, [H, W, 3] uint8 RGB)`` pairs.
        segmenters: name -> ``image -> (scores [C, H, W], labels [H, W])``.

    Returns:
        per segmenter: ``max_abs_diff`` (largest score difference over all pixels and
        classes), ``agreement`` (fraction of pixels with the model's label), ``pixels``,
        ``images`` and ``worst_image`` (the name of the image with the largest difference).
    """
    stats = {
        name: {"max_abs_diff": 0.0, "agree": 0, "pixels": 0, "images": 0, "worst_image": ""}
        for name in segmenters
    }
    for image_name, image in images:
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        with torch.no_grad():
            ref = model.inference([{"image": tensor}])[0]["sem_seg"]
        ref_scores = ref.float().cpu().numpy()
        ref_labels = ref_scores.argmax(axis=0)
        for name, segmenter in segmenters.items():
            scores, labels = segmenter(image)
            if scores.shape != ref_scores.shape:
                raise ValueError(
                    f"{name} on {image_name}: scores {scores.shape}, model {ref_scores.shape}"
                )
            diff = float(np.abs(scores - ref_scores).max())
            entry = stats[name]
            if diff >= entry["max_abs_diff"]:
                entry["max_abs_diff"], entry["worst_image"] = diff, image_name
            entry["agree"] += int((labels == ref_labels).sum())
            entry["pixels"] += int(ref_labels.size)
            entry["images"] += 1
    for entry in stats.values():
        entry["agreement"] = entry.pop("agree") / max(entry["pixels"], 1)
    return stats


def window_text(model: nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """What the export fixes of the classes the model predicts over
    (``HierVL.set_inference_classes``; the training classes by default).

    Returns:
        ``text [C, Dt]`` (learned prompts, class descriptions), computed once, and ``source
        [C]`` (training class of each class, -1 for other names; None for the training list).
    """
    with torch.no_grad():
        text = model.inference_text_embeddings().detach().clone()
    source = model.inference_classes.source
    return text, None if source is None else source.clone()
