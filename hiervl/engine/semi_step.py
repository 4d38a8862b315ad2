"""The semi-supervised step (METHOD §8): two loaders, EMA teacher, pseudo-labels, CutMix.

One step:
    1. draw the rank's share of a labelled batch (``SOLVER.IMS_PER_BATCH`` global) and, when the
       unlabelled losses are on, of an unlabelled batch (``SEMI.IMS_PER_BATCH_UNLABELED``) and,
       with CutMix on, of a mix batch of the same size from a second, independent unlabelled
       stream (UniMatch's mix loader);
    2. CutMix boxes (``SEMI.CUTMIX_PROB`` per image): image ``i`` of the batch will take a box
       from image ``i`` of the mix batch, so CutMix works at any per-process batch size;
    3. the teacher predicts the weak views of the batch and of the mix partners that give a box
       (``semantic_probs``, no grad; averaged with its prediction on the mirrored views with
       ``SEMI.TEACHER_FLIP``), aligned to the labelled class prior with
       ``SEMI.DISTRIBUTION_ALIGNMENT``: argmax labels and confidences; padded pixels are ignored;
       strong views, labels, confidences and padding masks are mixed with the same boxes;
    4. targets: ``threshold`` mode — confidence below ``SEMI.CONF_THRESHOLD`` is ignored (with
       ``SEMI.CLASS_BALANCED_RATIO`` > 0, per-class thresholds: every class predicted in the
       batch keeps its most confident pixels, so small classes are not learnt as absent);
       ``weight`` mode — every pixel weighted by its confidence; and the classes each mixed
       image rules out: those whose teacher probability stays below ``1 -
       SEMI.CONF_THRESHOLD`` on every pixel — only their rows learn "no object" (METHOD §8);
       with ``SEMI.RULE_OUT_CLASSES_PER_PIXEL``, also the pixels where the teacher gives a
       class less than that: its mask learns "not here" on those without a target.
       All of it travels as one :class:`UnlabeledBatch`;
    5. the student's loss: supervised on the labelled batch plus ``SEMI.UNSUP_WEIGHT`` × the
       unlabelled objective — its losses on the mixed strong views against their
       pseudo-labels (``HierVL.losses(..., labeled=False)``; with ``SEMI.FEATURE_DROPOUT``,
       channel dropout on their encoder features) plus ``SEMI.ENTROPY_WEIGHT`` × the entropy
       of its predictions — one forward of :class:`SemiSupervisedObjective` so that DDP sees
       one forward per backward;
    6. a non-finite loss term stops training with its name; backward (the GradScaler scales
       the loss with fp16 autocast), optimiser step on the unscaled gradients, which it clips
       first (``SOLVER.CLIP_GRADIENTS``, :func:`~hiervl.engine.optim.optimizer_with_clipping`);
       an update that leaves a non-finite weight stops training before any checkpoint
       (``FiniteWeightsHook``);
    7. EMA update of the teacher (weights and buffers) from the unwrapped student.
"""

import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from torch import nn

from hiervl.utils.comm import all_reduce_mean

from .loaders import ResumableLoader
from .ema import ema_momentum, ema_update
from .objective import UnlabeledBatch
from .semi import (
    align_distribution,
    class_balanced_thresholds,
    class_peak_probability,
    cutmix,
    finalize_pseudo_labels,
    mean_class_probability,
    pseudo_labels_from_probs,
    sample_cutmix_masks,
    unsup_rampup,
)

__all__ = ["GROUND_TRUTH_MODES", "SemiSupervisedStep", "pseudo_label_accuracy", "stack_views"]

GROUND_TRUTH_MODES = ("none", "measure", "oracle", "oracle_kept")


def stack_views(
    tensors: Sequence[torch.Tensor],
    pad_value: float = 0,
    size: Optional[Tuple[int, int]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Stack ``[..., H_i, W_i]`` tensors, padding bottom/right to the largest size (or to
    ``size`` ``(H, W)``, at least as large).

    Returns:
        ``[B, ..., H, W]`` and ``padded`` ``[B, H, W]`` bool (True where padding was added).
    """
    h = max(t.shape[-2] for t in tensors)
    w = max(t.shape[-1] for t in tensors)
    if size is not None:
        if size[0] < h or size[1] < w:
            raise ValueError(f"stack_views: size {tuple(size)} is smaller than the views {(h, w)}")
        h, w = int(size[0]), int(size[1])
    out = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], h, w), pad_value)
    padded = torch.ones(len(tensors), h, w, dtype=torch.bool)
    for i, t in enumerate(tensors):
        out[i, ..., : t.shape[-2], : t.shape[-1]] = t
        padded[i, : t.shape[-2], : t.shape[-1]] = False
    return out, padded


def ground_truth_probs(ground_truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The oracle's "teacher": one-hot ``[B, C, H, W]`` float of ``ground_truth [B, H, W]``
    (zero at ignored pixels, 255)."""
    valid = ground_truth != 255
    one_hot = torch.nn.functional.one_hot(ground_truth.where(valid, 0), num_classes)
    return (one_hot * valid[..., None]).permute(0, 3, 1, 2).float()


def pseudo_label_accuracy(
    targets: torch.Tensor,
    weights: Optional[torch.Tensor],
    ground_truth: torch.Tensor,
    absent: Optional[torch.Tensor] = None,
    ruled_out: Optional[torch.Tensor] = None,
) -> Dict[str, float]:
    """How right the kept pseudo-label pixels are, against the ground truth of the same crops.

    Args:
        targets: ``[B, H, W]`` long pseudo-labels, 255 = not kept.
        weights: ``[B, H, W]`` confidence weights ("weight" mode; a pixel of weight 0 is not
            kept), or None.
        ground_truth: ``[B, H, W]`` long, 255 = ignore.
        absent: ``[B, C]`` bool classes ruled absent from each crop, or None.
        ruled_out: ``[B, C, H, W]`` bool (pixel, class) pairs ruled out, or None.

    Returns:
        ``semi/pseudo_precision`` (right / kept, over kept pixels with a ground truth),
        ``semi/pseudo_precision/<c>`` for each class ``c`` with kept pixels, and
        ``semi/pseudo_coverage`` (kept / pixels with a ground truth), and with ``absent``
        ``semi/absent_wrong`` (the share of ruled-absent (image, class) pairs whose class has
        ground-truth pixels in the crop), and with ``ruled_out`` ``semi/ruled_out_wrong`` (the
        share of the ruled-out (pixel, class) pairs at pixels without a pseudo-label, where they
        are targets, whose class is the pixel's ground truth); empty when no pixel has a ground
        truth.
    """
    labelled = ground_truth != 255
    if not bool(labelled.any()):
        return {}
    kept = (targets != 255) & labelled
    if weights is not None:
        kept &= weights > 0
    stats = {"semi/pseudo_coverage": float(kept.sum()) / float(labelled.sum())}
    if bool(kept.any()):
        right = targets[kept] == ground_truth[kept]
        stats["semi/pseudo_precision"] = float(right.float().mean())
        kept_labels = targets[kept]
        for c in torch.unique(kept_labels).tolist():
            stats[f"semi/pseudo_precision/{c}"] = float(right[kept_labels == c].float().mean())
    if absent is not None and bool(absent.any()):
        present = torch.zeros_like(absent)
        for i, truth in enumerate(ground_truth):
            ids = truth[(truth != 255) & (truth < absent.shape[1])]
            present[i, ids] = True
        stats["semi/absent_wrong"] = float((present & absent).sum()) / float(absent.sum())
    if ruled_out is not None:
        unlabelled = labelled & ~kept
        pairs = ruled_out & unlabelled[:, None]
        if bool(pairs.any()):
            truth = ground_truth.where(labelled, 0).clamp(max=ruled_out.shape[1] - 1)
            wrong = ruled_out.gather(1, truth[:, None])[:, 0] & unlabelled
            stats["semi/ruled_out_wrong"] = float(wrong.sum()) / float(pairs.sum())
    return stats


class SemiSupervisedStep(AMPTrainer):
    """The inner trainer of :class:`HierVLTrainer`: the step described in the module docstring.

    detectron2's ``AMPTrainer`` gives the autocast dtype (``precision``), the ``GradScaler``
    (disabled unless fp16: its ``scale`` / ``step`` then pass through) and their checkpoint
    entry; ``run_step`` is ours (``AMPTrainer``'s needs CUDA and one data stream).
    """

    def __init__(
        self,
        objective: nn.Module,
        student: nn.Module,
        teacher: Optional[nn.Module],
        labeled_loader: ResumableLoader,
        unlabeled_loader: Optional[ResumableLoader],
        optimizer: torch.optim.Optimizer,
        *,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        ema_momentum: float,
        pseudo_label_mode: str,
        conf_threshold: float,
        class_balanced_ratio: float = 0.0,
        rule_out_absent: bool = True,
        rule_out_per_pixel: bool = False,
        class_prior: Optional[torch.Tensor] = None,
        unsup_weight: float,
        unsup_start_iter: int,
        unsup_rampup_iters: int = 0,
        teacher_flip: bool = False,
        cutmix_prob: float,
        precision: Optional[torch.dtype],
        mix_loader: Optional[ResumableLoader] = None,
        unlabeled_ground_truth: str = "none",
    ):
        """
        Args:
            objective: :class:`SemiSupervisedObjective` (possibly DDP-wrapped).
            student: the unwrapped student (EMA source).
            teacher: the EMA teacher, or None for supervised-only training.
            labeled_loader, unlabeled_loader: the two streams (unlabelled None when off).
            optimizer: the student's optimiser.
            pixel_mean, pixel_std: normalisation of the teacher's input (0-255 RGB).
            ema_momentum: cap m of ``min(1 - 1/(t+1), m)``.
            pseudo_label_mode: "threshold" or "weight".
            conf_threshold: confidence threshold of the "threshold" mode.
            class_balanced_ratio: "threshold" mode: each class predicted in the batch keeps at
                least this fraction of its most confident pixels (0 = global threshold only).
            rule_out_absent: rule classes out of an unlabelled crop where the teacher gives
                them less than ``1 - conf_threshold`` at every pixel (False: none is).
            rule_out_per_pixel: "threshold" mode: also the pixels where the teacher gives a
                class less than ``1 - conf_threshold``: the class's mask learns "not here" on
                those without a target (False: pixels below the threshold carry no target).
            class_prior: ``[C]`` class frequencies of the labelled pixels: the teacher's
                probabilities are aligned to it before pseudo-labelling (None = no alignment).
            unsup_weight: weight of the unlabelled loss.
            unsup_start_iter: first iteration with unlabelled losses.
            unsup_rampup_iters: iterations over which that weight rises from 0 (Gaussian
                ramp-up ``exp(-5 (1 - x)^2)`` from ``unsup_start_iter``; 0 = at once).
            teacher_flip: average the teacher's predictions on the weak view and its mirror.
            cutmix_prob: probability of a CutMix box per unlabelled image.
            precision: autocast dtype (``torch.bfloat16`` / ``torch.float16``, the latter
                with loss scaling), or None for full precision.
            mix_loader: the second unlabelled stream whose batches give the CutMix boxes
                (None: no CutMix).
            unlabeled_ground_truth: ``SEMI.UNLABELED_GROUND_TRUTH``, a diagnosis on data whose
                unlabelled crops carry ``sem_seg_gt``: "none"; "measure" (log the kept
                pseudo-labels' precision per class and their coverage); "oracle" (the ground
                truth replaces the teacher's predictions; thresholds, CutMix, absent classes
                and losses unchanged); "oracle_kept" (the pixels the teacher's pseudo-label
                keeps take their ground-truth label: its coverage with no wrong pixel).
        """
        if unlabeled_ground_truth not in GROUND_TRUTH_MODES:
            raise ValueError(
                f"SEMI.UNLABELED_GROUND_TRUTH must be one of {GROUND_TRUTH_MODES}, got "
                f"{unlabeled_ground_truth!r}"
            )
        if rule_out_per_pixel and pseudo_label_mode != "threshold":
            raise ValueError(
                "SEMI.RULE_OUT_CLASSES_PER_PIXEL is for SEMI.PSEUDO_LABEL_MODE 'threshold' (in "
                f"{pseudo_label_mode!r} mode every pixel already has a target)"
            )
        device = next(student.parameters()).device
        super().__init__(
            objective,
            labeled_loader,
            optimizer,
            grad_scaler=torch.amp.GradScaler(device.type, enabled=precision == torch.float16),
            precision=precision or torch.float32,
        )
        self.student = student
        self.teacher = teacher
        self.labeled_loader = labeled_loader
        self.unlabeled_loader = unlabeled_loader
        self.mix_loader = mix_loader
        self.device = device
        self.pixel_mean = torch.tensor(pixel_mean, device=device).view(-1, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, device=device).view(-1, 1, 1)
        self.ema_momentum = ema_momentum
        self.pseudo_label_mode = pseudo_label_mode
        self.conf_threshold = conf_threshold
        self.class_balanced_ratio = class_balanced_ratio
        self.rule_out_absent = rule_out_absent
        self.rule_out_per_pixel = rule_out_per_pixel
        self.class_prior = class_prior
        self.unsup_weight = unsup_weight
        self.unsup_start_iter = unsup_start_iter
        self.unsup_rampup_iters = unsup_rampup_iters
        self.teacher_flip = teacher_flip
        self.cutmix_prob = cutmix_prob
        self.unlabeled_ground_truth = unlabeled_ground_truth

    # ---- pieces of the step, overridable by projects -----------------------------------
    def autocast(self):
        """Autocast to ``precision`` on the step's device (off at float32)."""
        return torch.autocast(
            self.device.type, dtype=self.precision, enabled=self.precision != torch.float32
        )

    def semi_active(self) -> bool:
        return (
            self.teacher is not None
            and self.unlabeled_loader is not None
            and self.unsup_weight > 0
            and self.iter >= self.unsup_start_iter
        )

    def current_unsup_weight(self) -> float:
        """``SEMI.UNSUP_WEIGHT`` at this iteration, with the ramp-up of
        ``SEMI.UNSUP_RAMPUP_ITERS`` (Laine & Aila's ``exp(-5 (1 - x)^2)``)."""
        return self.unsup_weight * unsup_rampup(
            self.iter - self.unsup_start_iter, self.unsup_rampup_iters
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` uint8 → float, normalised with the model's pixel mean / std."""
        return (images.to(self.device).float() - self.pixel_mean) / self.pixel_std

    @torch.no_grad()
    def teacher_predict(
        self, weak: torch.Tensor, valid: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Teacher's labels and confidences ``[B, H, W]`` of weak views ``[B, 3, H, W]`` uint8
        (argmax of :meth:`teacher_probs`)."""
        return pseudo_labels_from_probs(self.teacher_probs(weak, valid))

    @torch.no_grad()
    def teacher_probs(self, weak: torch.Tensor, valid: Optional[torch.Tensor] = None):
        """Teacher's class distribution ``[B, C, H, W]`` (float) of weak views ``[B, 3, H, W]``
        uint8, averaged with its mirrored prediction with ``teacher_flip``; with distribution
        alignment over the ``valid [B, H, W]`` pixels when a class prior is set."""
        images = self.normalize(weak)
        with self.autocast():
            probs = self.teacher.semantic_probs(images)
            if self.teacher_flip:
                mirrored = self.teacher.semantic_probs(images.flip(-1)).flip(-1)
                probs = 0.5 * (probs + mirrored)
        if self.class_prior is not None:
            # the batch mean over every process: the same alignment everywhere
            batch_mean = all_reduce_mean(mean_class_probability(probs, valid))
            probs = align_distribution(probs, self.class_prior, batch_mean=batch_mean)
        return probs.float()

    def prepare_unlabeled(
        self, batch: List[dict], mix_batch: Optional[List[dict]] = None
    ) -> UnlabeledBatch:
        """Pseudo-labelled, CutMix'ed strong views of an unlabelled batch (steps 2-4).

        Args:
            batch: mapped unlabelled dicts (``image`` = weak view, ``image_strong``,
                ``ignore_mask``).
            mix_batch: as many dicts from the mix stream: image ``i`` of ``batch`` takes its
                CutMix box from image ``i`` of ``mix_batch``; None = no CutMix.

        Returns:
            the strong views, their pseudo-labels and what they were made from
            (:class:`UnlabeledBatch`).
        """
        n = len(batch)
        if mix_batch is not None and len(mix_batch) != n:
            raise ValueError(f"mix batch of {len(mix_batch)} images for a batch of {n}")
        views = list(batch) + list(mix_batch or [])
        weak, pad = stack_views([d["image"] for d in views])
        strong, _ = stack_views([d["image_strong"] for d in views])
        ignore, _ = stack_views([d["ignore_mask"] for d in views], pad_value=True)
        ignore = ignore | pad
        gt = None
        if self.unlabeled_ground_truth != "none":
            gt, _ = stack_views([d["sem_seg_gt"] for d in views], pad_value=255)
            if self.unlabeled_ground_truth == "oracle":
                ignore = ignore | (gt == 255)
        _, _, h, w = weak.shape
        prob = self.cutmix_prob if mix_batch is not None else 0.0
        masks = sample_cutmix_masks(n, h, w, prob=prob)
        boxed = masks.flatten(1).any(1)
        # The teacher sees the batch and the mix partners whose box is used.
        taught = torch.cat([torch.arange(n), n + torch.nonzero(boxed).flatten()])
        if self.unlabeled_ground_truth == "oracle":
            probs = ground_truth_probs(gt[taught], self.student.num_classes)
        else:
            probs = self.teacher_probs(weak[taught], ~ignore[taught])
        labels, conf = pseudo_labels_from_probs(probs)
        labels, conf = labels.cpu(), conf.cpu()
        threshold = self.conf_threshold
        if self.pseudo_label_mode == "threshold" and self.class_balanced_ratio > 0:
            threshold = class_balanced_thresholds(
                labels,
                conf,
                ignore[taught],
                num_classes=probs.shape[1],
                threshold=self.conf_threshold,
                keep_ratio=self.class_balanced_ratio,
            )
        # each image's partner: its mix image where it has a box, itself elsewhere (unused)
        partner = torch.arange(n)
        partner[boxed] = torch.arange(n, len(taught))
        peak = class_peak_probability(probs[:n], ~ignore[:n] & ~masks).cpu()
        if bool(boxed.any()):
            pasted = class_peak_probability(probs[n:], ~ignore[n:][boxed] & masks[boxed])
            peak[boxed] = torch.maximum(peak[boxed], pasted.cpu())
        mix_index = torch.arange(n, n + n) if mix_batch is not None else torch.arange(n)
        mixed_ignore = cutmix(ignore[:n], ignore[mix_index], masks)
        targets, weights = finalize_pseudo_labels(
            cutmix(labels[:n], labels[partner], masks),
            cutmix(conf[:n], conf[partner], masks),
            mixed_ignore,
            mode=self.pseudo_label_mode,
            threshold=threshold,
        )
        mixed_gt = cutmix(gt[:n], gt[taught][partner], masks) if gt is not None else None
        if self.unlabeled_ground_truth == "oracle_kept":
            # the teacher's choice of pixels, the ground truth's labels (void stays out)
            targets = torch.where(targets != 255, mixed_gt, targets)
        # A class is ruled out where the teacher is as sure of its absence at every pixel as a
        # kept pixel is of its label (METHOD §8); a class with target pixels is never absent.
        if self.rule_out_absent:
            absent = peak < 1.0 - self.conf_threshold
        else:
            absent = torch.zeros_like(peak, dtype=torch.bool)
        for i in range(n):
            absent[i, targets[i][(targets[i] >= 0) & (targets[i] < absent.shape[1])]] = False
        ruled_out = None
        if self.rule_out_per_pixel:
            # the same boxes as the labels: each pixel's class distribution is its source's
            probs = probs.cpu()
            mixed_probs = cutmix(probs[:n], probs[partner], masks)
            ruled_out = (mixed_probs < 1.0 - self.conf_threshold) & ~mixed_ignore[:, None]
        return UnlabeledBatch(
            weak=weak[:n],
            strong=strong[:n],
            strong_mixed=cutmix(strong[:n], strong[mix_index], masks),
            labels=labels[:n],
            conf=conf[:n],
            ignore=ignore[:n],
            cutmix=masks,
            targets=targets,
            weights=weights,
            absent=absent,
            conf_threshold=self.conf_threshold,
            class_thresholds=threshold if torch.is_tensor(threshold) else None,
            # ``partner`` indexes the taught views, whose first n are the batch's own
            ground_truth=mixed_gt,
            ruled_out=ruled_out,
        )

    def pseudo_label_stats(self, batch: UnlabeledBatch) -> Dict[str, float]:
        """Scalars of the step's pseudo-labels (and the unlabelled losses' weight)."""
        valid = ~batch.ignore
        return {
            "semi/pseudo_conf_mean": float(batch.conf[valid].mean()) if valid.any() else 0.0,
            "semi/pseudo_kept_ratio": float((batch.targets != 255).float().mean()),
            "semi/cutmix_ratio": float(batch.cutmix.float().mean()),
            "semi/absent_class_ratio": float(batch.absent.float().mean()),
            "semi/unsup_weight": self.current_unsup_weight(),
            **(
                pseudo_label_accuracy(
                    batch.targets, batch.weights, batch.ground_truth, batch.absent, batch.ruled_out
                )
                if batch.ground_truth is not None
                else {}
            ),
        }

    def compute_losses(
        self,
        labeled: List[dict],
        unlabeled_batch: Optional[List[dict]],
        mix_batch: Optional[List[dict]] = None,
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, float]]:
        """Student losses of one step (steps 2-5); ``mix_batch``: CutMix partners (None = no
        CutMix)."""
        unlabeled, stats = (None, {})
        if unlabeled_batch is not None:
            unlabeled = self.prepare_unlabeled(unlabeled_batch, mix_batch)
            stats = self.pseudo_label_stats(unlabeled)
        with self.autocast():
            loss_dict = self.model(labeled, unlabeled, self.current_unsup_weight())
        return loss_dict, stats

    def check_finite(self, loss_dict: Dict[str, torch.Tensor]) -> None:
        """Raise ``FloatingPointError`` naming the non-finite loss terms (of any rank). The
        terms are kept (detached) as ``last_losses`` for :class:`FiniteWeightsHook`'s report."""
        self.last_losses = {n: v.detach() for n, v in loss_dict.items()}
        names = sorted(loss_dict)
        flags = torch.stack(
            [(~torch.isfinite(loss_dict[n].detach().float())).any().float() for n in names]
        )
        if comm.get_world_size() > 1:
            dist.all_reduce(flags)
        bad = [n for n, f in zip(names, flags.tolist()) if f > 0]
        if bad:
            values = {n: float(loss_dict[n].detach().float()) for n in bad}
            raise FloatingPointError(
                f"Non-finite loss at iteration {self.iter}: {', '.join(bad)} "
                f"(this rank's values: {values})"
            )

    def run_step(self):
        assert self.model.training, "[SemiSupervisedStep] the student was put in eval mode"
        t0 = time.perf_counter()
        labeled = self.labeled_loader.next()
        unlabeled_batch = mix_batch = None
        if self.semi_active():
            unlabeled_batch = self.unlabeled_loader.next()
            if self.mix_loader is not None:
                mix_batch = self.mix_loader.next()
        data_time = time.perf_counter() - t0

        loss_dict, stats = self.compute_losses(labeled, unlabeled_batch, mix_batch)
        self.check_finite(loss_dict)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        if stats:
            get_event_storage().put_scalars(**stats)
        # unscales the gradients, then the optimiser clips them (SOLVER.CLIP_GRADIENTS) and steps
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if self.teacher is not None:
            ema_update(self.teacher, self.student, ema_momentum(self.iter, self.ema_momentum))

    def load_state_dict(self, state_dict):
        # A run without fp16 saves an empty scaler state, and checkpoints written before the
        # step was an AMPTrainer have none: the scaler then starts afresh.
        if state_dict.get("grad_scaler"):
            super().load_state_dict(state_dict)
        else:
            SimpleTrainer.load_state_dict(self, state_dict)
