"""Which unlabelled images to label next (docs/LABEL_NEXT.md has the formula and its reasons).

Every image of the pool gets a score from the teacher's prediction:

- ``U``, uncertainty: mean over pixels of the normalised entropy (or ``1 - margin``) of the
  class-normalised scores ``p(c, x) = S(c, x) / sum_c' S(c', x)``;
- ``B``, class balance: the image's predicted classes, weighted by how rare each class is in the
  labelled set and how uncertain the teacher is about it over the pool;
- ``s = U + balance_weight * B``; then a greedy pick of ``num_select`` images, each penalised by
  ``diversity_weight * R``, ``R`` its largest cosine similarity (pool-centred CLIP global
  embeddings) to an image picked before it, so that the picks are not near-duplicates.

The pure functions (``pixel_uncertainty`` ... ``rank_images``) work on probability maps and
embeddings; ``score_image`` / ``rank_records`` run a :class:`HierVLPredictor` on images, and
``contact_sheet`` draws the top of a ranking.
"""

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data.detection_utils import read_image
from tqdm import tqdm

from .predictor import HierVLPredictor
from hiervl.data.image_io import load_semseg_mask
from .visualization import caption, draw_semseg, side_by_side

__all__ = [
    "UNCERTAINTY_KINDS",
    "ImageStats",
    "RankedImage",
    "pixel_uncertainty",
    "image_stats",
    "labelled_class_frequency",
    "class_weights",
    "balance_term",
    "diverse_order",
    "rank_images",
    "score_image",
    "rank_records",
    "contact_sheet",
    "uncertainty_heatmap",
]

logger = logging.getLogger(__name__)

UNCERTAINTY_KINDS = ("entropy", "margin")
# Added to the labelled frequency before the inverse square root: a class with no labelled pixel
# gets the largest, finite rarity.
RARITY_EPS = 1e-3


@dataclass
class ImageStats:
    """What the ranking needs of one image's prediction.

    Attributes:
        name: the image (its path).
        uncertainty: ``U``, mean pixel uncertainty in ``[0, 1]``.
        class_share: ``[C]`` fraction of the pixels predicted as each class (``a_c``).
        class_uncertainty_sum: ``[C]`` sum of the pixel uncertainty over the pixels predicted
            as each class (pooled over images for ``class_weights``).
        class_pixels: ``[C]`` number of pixels predicted as each class.
        embedding: ``[D]`` global image embedding (diversity).
    """

    name: str
    uncertainty: float
    class_share: np.ndarray
    class_uncertainty_sum: np.ndarray
    class_pixels: np.ndarray
    embedding: np.ndarray


@dataclass
class RankedImage:
    """One row of a ranking (the CSV of ``tools/rank_unlabeled.py``).

    Attributes:
        rank: 1 = label first.
        name: the image.
        score: ``U + balance_weight * B - diversity_weight * R``.
        uncertainty / balance / redundancy: ``U``, ``B``, ``R``.
        classes: ``(class id, share)`` of the predicted classes, largest share first.
    """

    rank: int
    name: str
    score: float
    uncertainty: float
    balance: float
    redundancy: float
    classes: List[Tuple[int, float]] = field(default_factory=list)


def pixel_uncertainty(probs: torch.Tensor, kind: str = "entropy") -> torch.Tensor:
    """Per-pixel uncertainty of a class distribution, in ``[0, 1]``.

    Args:
        probs: ``[C, H, W]``, summing to 1 over ``C``.
        kind: ``"entropy"``: ``-sum_c p log p / log C``; ``"margin"``: ``1 - (p_1 - p_2)``, the
            two largest probabilities. Both are 0 for a one-hot pixel and 1 for a uniform one
            (margin: for a tie of the two best); 0 everywhere when ``C = 1``.

    Returns:
        ``[H, W]`` float.
    """
    if kind not in UNCERTAINTY_KINDS:
        raise ValueError(f"uncertainty kind must be one of {UNCERTAINTY_KINDS}, got {kind!r}")
    probs = probs.float()
    num_classes = probs.shape[0]
    if num_classes == 1:
        return probs.new_zeros(probs.shape[1:])
    if kind == "entropy":
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(0)
        return (entropy / math.log(num_classes)).clamp(0.0, 1.0)
    top2 = probs.topk(2, dim=0).values
    return (1.0 - (top2[0] - top2[1])).clamp(0.0, 1.0)


def image_stats(
    probs: torch.Tensor, embedding: torch.Tensor, *, kind: str = "entropy", name: str = ""
) -> ImageStats:
    """Reduce one image's class distribution ``[C, H, W]`` and embedding ``[D]`` to its stats."""
    uncertainty = pixel_uncertainty(probs, kind)
    labels = probs.argmax(0).flatten()
    num_classes = probs.shape[0]
    pixels = torch.bincount(labels, minlength=num_classes).double()
    unc_sum = torch.zeros(num_classes, dtype=torch.float64).index_add_(
        0, labels, uncertainty.flatten().double()
    )
    return ImageStats(
        name=name,
        uncertainty=float(uncertainty.mean()),
        class_share=(pixels / labels.numel()).numpy(),
        class_uncertainty_sum=unc_sum.numpy(),
        class_pixels=pixels.numpy(),
        embedding=embedding.detach().float().cpu().numpy().reshape(-1),
    )


def labelled_class_frequency(
    records: Sequence[Dict], num_classes: int, *, ignore_label: int = 255
) -> np.ndarray:
    """Pixel frequency ``[C]`` of each class in the ground truth of labelled dataset dicts
    (``sem_seg_file_name``); ignored pixels are not counted. Sums to 1 (zeros without pixels)."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for record in records:
        mask = load_semseg_mask(record["sem_seg_file_name"])
        valid = mask[(mask != ignore_label) & (mask >= 0) & (mask < num_classes)]
        counts += np.bincount(valid.ravel(), minlength=num_classes)[:num_classes]
    total = counts.sum()
    return counts / total if total > 0 else counts


def class_weights(
    stats: Sequence[ImageStats], labelled_frequency: Optional[np.ndarray] = None
) -> Dict[str, np.ndarray]:
    """Per-class weights of the balance term.

    Args:
        stats: the pool's image stats.
        labelled_frequency: ``[C]`` pixel frequency of each class in the labelled set; None:
            the pool's predicted frequency (mean of ``class_share``).

    Returns:
        ``{"rarity": r [C], "uncertainty": k [C], "weight": w [C]}``, each in ``[0, 1]``:
        ``r_c = (F_c + eps)^(-1/2) / max_c'(...)``, ``k_c`` the mean pixel uncertainty over the
        pool's pixels predicted as ``c`` (0 for a class never predicted),
        ``w_c = (r_c + k_c) / 2``.
    """
    if not stats:
        raise ValueError("class_weights needs at least one image")
    if labelled_frequency is None:
        frequency = np.mean([s.class_share for s in stats], axis=0)
    else:
        frequency = np.asarray(labelled_frequency, dtype=np.float64)
    rarity = (frequency + RARITY_EPS) ** -0.5
    rarity = rarity / rarity.max()
    pixels = np.sum([s.class_pixels for s in stats], axis=0)
    unc_sum = np.sum([s.class_uncertainty_sum for s in stats], axis=0)
    uncertainty = np.divide(unc_sum, pixels, out=np.zeros_like(unc_sum), where=pixels > 0)
    return {"rarity": rarity, "uncertainty": uncertainty, "weight": (rarity + uncertainty) / 2}


def balance_term(class_share: np.ndarray, weight: np.ndarray) -> float:
    """``B = sum_c sqrt(a_c) w_c / sum_c sqrt(a_c)``: the class weights averaged over the
    image's predicted classes, by the square root of their shares (a small segment of a rare
    class still counts)."""
    root = np.sqrt(np.asarray(class_share, dtype=np.float64))
    total = root.sum()
    return float((root * weight).sum() / total) if total > 0 else 0.0


def diverse_order(
    scores: np.ndarray, embeddings: np.ndarray, *, diversity_weight: float, num_select: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Greedy order: ``num_select`` times, pick the image of largest ``s - diversity_weight *
    R``, ``R`` its largest cosine similarity (clamped at 0) to the images picked so far; the
    rest follow by the same penalised score against the picked ones.

    Embeddings are centred on the pool's mean before the cosine, so that what every image
    shares (e.g. a random-init encoder's common direction) does not make all pairs alike.

    Args:
        scores: ``[N]`` base scores ``s``.
        embeddings: ``[N, D]``.
        diversity_weight: ``gamma`` (0 = plain order by ``s``).
        num_select: number of greedy picks.

    Returns:
        ``order [N]`` (indices, first = label first) and ``redundancy [N]`` (``R`` of each
        image when it was placed).
    """
    scores = np.asarray(scores, dtype=np.float64)
    count = scores.shape[0]
    centred = np.asarray(embeddings, dtype=np.float64)
    centred = centred - centred.mean(0, keepdims=True)
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    unit = np.divide(centred, norms, out=np.zeros_like(centred), where=norms > 1e-12)
    nearest = np.zeros(count)  # largest similarity to a picked image, clamped at 0
    redundancy = np.zeros(count)
    free = np.ones(count, dtype=bool)
    order: List[int] = []
    for _ in range(min(num_select, count)):
        penalised = np.where(free, scores - diversity_weight * nearest, -np.inf)
        pick = int(np.argmax(penalised))
        order.append(pick)
        redundancy[pick] = nearest[pick]
        free[pick] = False
        nearest = np.maximum(nearest, np.clip(unit @ unit[pick], 0.0, 1.0))
    rest = np.flatnonzero(free)
    redundancy[rest] = nearest[rest]
    penalised = scores[rest] - diversity_weight * nearest[rest]
    order.extend(rest[np.argsort(-penalised, kind="stable")].tolist())
    return np.asarray(order, dtype=np.int64), redundancy


def rank_images(
    stats: Sequence[ImageStats],
    *,
    balance_weight: float = 0.5,
    diversity_weight: float = 0.5,
    num_select: int = 10,
    labelled_frequency: Optional[np.ndarray] = None,
) -> List[RankedImage]:
    """Rank a pool: ``s = U + balance_weight * B``, then :func:`diverse_order`.

    Args:
        stats: one :class:`ImageStats` per pool image.
        balance_weight: ``beta`` of the balance term (0 = off).
        diversity_weight: ``gamma`` of the redundancy penalty (0 = off).
        num_select: greedy picks (the number of images to label next).
        labelled_frequency: see :func:`class_weights`.

    Returns:
        the ranking, rank 1 first.
    """
    if not stats:
        return []
    weights = class_weights(stats, labelled_frequency)["weight"]
    balance = np.array([balance_term(s.class_share, weights) for s in stats])
    uncertainty = np.array([s.uncertainty for s in stats])
    base = uncertainty + balance_weight * balance
    order, redundancy = diverse_order(
        base,
        np.stack([s.embedding for s in stats]),
        diversity_weight=diversity_weight,
        num_select=num_select,
    )
    ranking = []
    for rank, i in enumerate(order, start=1):
        share = stats[i].class_share
        classes = [(int(c), float(share[c])) for c in np.argsort(-share) if share[c] > 0]
        ranking.append(
            RankedImage(
                rank=rank,
                name=stats[i].name,
                score=float(base[i] - diversity_weight * redundancy[i]),
                uncertainty=float(uncertainty[i]),
                balance=float(balance[i]),
                redundancy=float(redundancy[i]),
                classes=classes,
            )
        )
    return ranking


# ---- running the model ---------------------------------------------------------------------


@torch.no_grad()
def global_embedding(model: torch.nn.Module, image: np.ndarray) -> torch.Tensor:
    """The fine-tuned CLIP encoder's global embedding ``[Dt]`` of an ``[H, W, 3]`` RGB image,
    resized to the encoder's input size (its position-embedding grid)."""
    encoder = model.image_encoder
    grid = tuple(int(g) for g in encoder.visual.grid_size)
    size = (grid[0] * encoder.patch_size, grid[1] * encoder.patch_size)
    tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).to(model.device)
    tensor = (tensor.float()[None] - model.pixel_mean) / model.pixel_std
    tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    return encoder(tensor)["global"][0].float()


def class_probabilities(sem_seg: torch.Tensor) -> torch.Tensor:
    """``p(c, x) = S(c, x) / sum_c' S(c', x)`` of a model's ``sem_seg [C, H, W]``."""
    scores = sem_seg.float().clamp(min=0)
    total = scores.sum(0, keepdim=True)
    uniform = torch.full_like(scores, 1.0 / scores.shape[0])
    return torch.where(total > 0, scores / total.clamp(min=1e-12), uniform)


def score_image(
    predictor: HierVLPredictor, image: np.ndarray, *, kind: str = "entropy", name: str = ""
) -> Tuple[ImageStats, torch.Tensor]:
    """Stats of one ``[H, W, 3]`` RGB image, and its class distribution ``[C, H, W]`` (CPU)."""
    probs = class_probabilities(predictor(image)["sem_seg"]).cpu()
    embedding = global_embedding(predictor.model, image).cpu()
    return image_stats(probs, embedding, kind=kind, name=name), probs


def rank_records(
    predictor: HierVLPredictor,
    file_names: Sequence[str],
    *,
    kind: str = "entropy",
    balance_weight: float = 0.5,
    diversity_weight: float = 0.5,
    num_select: int = 10,
    labelled_frequency: Optional[np.ndarray] = None,
    progress: bool = True,
) -> List[RankedImage]:
    """Score every image file with the predictor (progress bar), then :func:`rank_images`.

    Raises:
        ValueError: a file that cannot be read, named.
    """
    stats = []
    for path in tqdm(file_names, desc="scoring", unit="img", disable=not progress):
        try:
            image = read_image(path, format="RGB")
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot read image {path}: {e}") from e
        stats.append(score_image(predictor, np.asarray(image), kind=kind, name=path)[0])
    return rank_images(
        stats,
        balance_weight=balance_weight,
        diversity_weight=diversity_weight,
        num_select=num_select,
        labelled_frequency=labelled_frequency,
    )


# ---- drawing -------------------------------------------------------------------------------


def uncertainty_heatmap(uncertainty: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """``[H, W]`` uncertainty → ``[H, W, 3]`` uint8 RGB (inferno: dark = ``low`` or less,
    bright = ``high`` or more)."""
    scaled = (np.asarray(uncertainty, dtype=np.float32) - low) / max(high - low, 1e-6)
    grey = (np.clip(scaled, 0.0, 1.0) * 255).round().astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(grey, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)


def _resize(image: np.ndarray, height: int, nearest: bool = False) -> np.ndarray:
    width = max(int(round(image.shape[1] * height / image.shape[0])), 1)
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, (width, height), interpolation=interpolation)


def contact_sheet(
    predictor: HierVLPredictor,
    ranking: Sequence[RankedImage],
    metadata,
    *,
    kind: str = "entropy",
    height: int = 160,
) -> np.ndarray:
    """One row per ranked image: the image, its predicted map (``metadata``'s colours) and its
    uncertainty heat map, at ``height`` pixels, under a caption with the rank, the file name and
    the score's parts. The heat maps share one colour scale, from the lowest to the highest
    pixel uncertainty of the sheet (written in their caption).

    Returns:
        ``[rows, W, 3]`` uint8 RGB (rows padded with white to the widest).
    """
    if not ranking:
        raise ValueError("contact_sheet: empty ranking")
    drawn = []
    for item in ranking:
        image = np.asarray(read_image(item.name, format="RGB"))
        _, probs = score_image(predictor, image, kind=kind, name=item.name)
        small = _resize(image, height)
        labels = _resize(probs.argmax(0).numpy().astype(np.uint8), height, nearest=True)
        uncertainty = _resize(pixel_uncertainty(probs, kind).numpy().astype(np.float32), height)
        drawn.append(
            (item, small, draw_semseg(small, labels.astype(np.int64), metadata), uncertainty)
        )
    low = float(min(d[3].min() for d in drawn))
    high = float(max(d[3].max() for d in drawn))
    rows = []
    for item, small, prediction, uncertainty in drawn:
        panels = side_by_side(
            [small, prediction, uncertainty_heatmap(uncertainty, low, high)],
            gap=4,
            captions=["image", "prediction", f"uncertainty {low:.2f}-{high:.2f}"],
        )
        title = (
            f"#{item.rank} {os.path.basename(item.name)}  score {item.score:.3f} "
            f"(U {item.uncertainty:.3f}, B {item.balance:.3f}, R {item.redundancy:.3f})"
        )
        rows.append(caption(panels, title))
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    return np.concatenate(padded, axis=0)
