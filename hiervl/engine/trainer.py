"""The semi-supervised trainer (METHOD §8): two loaders, EMA teacher, pseudo-labels, CutMix.

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
       SEMI.CONF_THRESHOLD`` on every pixel — only their rows learn "no object" (METHOD §8).
       All of it travels as one :class:`UnlabeledBatch`;
    5. the student's loss: supervised on the labelled batch plus ``SEMI.UNSUP_WEIGHT`` × the
       unlabelled objective — its losses on the mixed strong views against their
       pseudo-labels (``HierVL.losses(..., labeled=False)``; with ``SEMI.FEATURE_DROPOUT``,
       channel dropout on their encoder features) plus ``SEMI.ENTROPY_WEIGHT`` × the entropy
       of its predictions — one forward of :class:`SemiSupervisedObjective` so that DDP sees
       one forward per backward;
    6. a non-finite loss term stops training with its name; backward (with a GradScaler for
       fp16 autocast), gradient clipping, optimiser step (an update that leaves a non-finite
       weight stops training before any checkpoint: ``FiniteWeightsHook``);
    7. EMA update of the teacher (weights and buffers) from the unwrapped student.
"""

import logging
import os
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hiervl.data.dataset_mappers import build_dataset_mapper
from hiervl.evaluation import build_semseg_evaluator
from hiervl.hiervl_model import semantic_map
from hiervl.utils.comm import all_reduce_mean

from .checkpoint import (
    AtomicCheckpointer,
    FiniteWeightsHook,
    ModuleState,
    RNGStateHook,
    claim_output_dir,
    release_output_dir,
)
from .data import ResumableLoader, build_resumable_loader
from .ema import build_teacher, ema_momentum, ema_update
from .optim import build_hiervl_lr_scheduler, build_hiervl_optimizer, clip_gradients
from .semi import (
    align_distribution,
    class_balanced_thresholds,
    class_peak_probability,
    class_pixel_prior,
    cutmix,
    finalize_pseudo_labels,
    mean_class_probability,
    pseudo_labels_from_probs,
    sample_cutmix_masks,
    unsup_rampup,
)

__all__ = [
    "BACKBONE_MODULES",
    "SemiSupervisedObjective",
    "SemiSupervisedStep",
    "HierVLTrainer",
    "UnlabeledBatch",
    "prediction_entropy",
    "stack_views",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)

# Modules of the HierVL META_ARCH whose parameters get BACKBONE_MULTIPLIER: the pretrained CLIP
# visual tower only. Every other trainable parameter, the feature pyramid added inside the image
# encoder included, gets SOLVER.HEAD_MULTIPLIER (build_param_groups).
BACKBONE_MODULES = ("image_encoder.visual",)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


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


def wrap_ddp(module: nn.Module) -> nn.Module:
    """``DistributedDataParallel`` when several processes run (CUDA: this rank's device; CPU:
    gloo, no device ids — detectron2's ``create_ddp_model`` always passes device ids), else the
    module itself. Buffers are not broadcast; parameters unused by a step are allowed."""
    if comm.get_world_size() == 1:
        return module
    kwargs = {"broadcast_buffers": False, "find_unused_parameters": True}
    if next(module.parameters()).is_cuda:
        kwargs["device_ids"] = [comm.get_local_rank()]
    return DistributedDataParallel(module, **kwargs)


@dataclass
class UnlabeledBatch:
    """The pseudo-labelled unlabelled batch of one step (steps 2-4), what the student's
    unlabelled objective reads. Tensors are ``[B, ...]`` on the CPU.

    Attributes:
        weak: ``[B, 3, H, W]`` uint8 weak views, the teacher's input (not mixed).
        strong: ``[B, 3, H, W]`` uint8 strong views (not mixed).
        strong_mixed: ``[B, 3, H, W]`` uint8 strong views with the CutMix boxes pasted in: the
            student's input.
        labels: ``[B, H, W]`` long teacher argmax labels of the weak views (not mixed).
        conf: ``[B, H, W]`` float their confidences (not mixed).
        ignore: ``[B, H, W]`` bool padding and ignored pixels of the weak views (not mixed).
        cutmix: ``[B, H, W]`` bool, True where the pixels come from the mix partner.
        targets: ``[B, H, W]`` long mixed pseudo-labels, 255 = ignored.
        weights: ``[B, H, W]`` float confidence weights of the targets ("weight" mode), or
            None ("threshold" mode).
        absent: ``[B, C]`` bool classes each mixed image rules out (METHOD §8): their rows
            learn "no object"; never a class with target pixels.
        conf_threshold: ``SEMI.CONF_THRESHOLD``: "threshold" mode drops pixels below it (or
            below ``class_thresholds``); a class whose probability stays below
            ``1 - conf_threshold`` on every pixel is absent.
        class_thresholds: ``[C]`` class-balanced thresholds used in place of
            ``conf_threshold`` for the targets, or None.
    """

    weak: torch.Tensor
    strong: torch.Tensor
    strong_mixed: torch.Tensor
    labels: torch.Tensor
    conf: torch.Tensor
    ignore: torch.Tensor
    cutmix: torch.Tensor
    targets: torch.Tensor
    weights: Optional[torch.Tensor]
    absent: torch.Tensor
    conf_threshold: float
    class_thresholds: Optional[torch.Tensor] = None


def prediction_entropy(outputs: Dict) -> torch.Tensor:
    """Mean per-pixel entropy of the normalised class distribution ``S(c, x)`` of decoder
    outputs (``pred_logits``, ``pred_masks``, ``keep``; ``semantic_map`` over the kept rows)."""
    sem = semantic_map(outputs, outputs["keep"])
    probs = sem / sem.sum(1, keepdim=True).clamp(min=1e-6)
    return -(probs * probs.clamp(min=1e-8).log()).sum(1).mean()


class SemiSupervisedObjective(nn.Module):
    """Student loss of one step: supervised + weighted unsupervised, in one ``forward``.

    Wrapping the student in this module (and this module in DDP) keeps one forward per
    backward, which DDP requires, although the student runs on two batches. The unlabelled
    objective lives here: the student's losses on the mixed strong views against their
    pseudo-labels (confidence weights, ruled-out classes: :class:`UnlabeledBatch`), with
    feature dropout, plus entropy minimisation of its predictions.
    """

    def __init__(self, model: nn.Module, *, entropy_weight: float = 0.0, feature_dropout=0.0):
        """
        Args:
            model: the student META_ARCH: ``model(labelled dicts)`` returns a dict of losses,
                ``model.losses(images, targets, labeled=False, weights=, absent=,
                feature_dropout=, return_attn=)`` returns the losses and the decoder outputs
                of pseudo-labelled images (:meth:`hiervl.hiervl_model.HierVL.losses`).
            entropy_weight: weight of the mean entropy of the strong views' predictions
                (``SEMI.ENTROPY_WEIGHT``; 0 = off).
            feature_dropout: channel-dropout probability on the student's encoder features of
                the strong views (``SEMI.FEATURE_DROPOUT``; 0 = none).
        """
        super().__init__()
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"SEMI.FEATURE_DROPOUT must be in [0, 1), got {feature_dropout}")
        self.model = model
        self.entropy_weight = entropy_weight
        self.feature_dropout = feature_dropout

    def forward(
        self,
        labeled: List[dict],
        unlabeled: Optional[UnlabeledBatch] = None,
        unsup_weight: float = 1.0,
        views: Optional[Dict[str, torch.Tensor]] = None,
    ) -> Dict[str, torch.Tensor]:
        """
        Args:
            labeled: mapped labelled dicts (``image``, ``sem_seg``).
            unlabeled: the step's pseudo-labelled strong views, or None.
            unsup_weight: factor of every unlabelled loss term.
            views: extra views for subclasses (HVLFormer); unused here.

        Returns:
            loss dict; unlabelled terms are suffixed ``_unsup``.
        """
        losses = dict(self.model(labeled))
        if unlabeled is not None:
            for name, value in self.unlabeled_losses(unlabeled, views).items():
                losses[name] = value * unsup_weight
        return losses

    def unlabeled_losses(
        self, batch: UnlabeledBatch, views: Optional[Dict[str, torch.Tensor]] = None
    ) -> Dict[str, torch.Tensor]:
        """The unlabelled terms (before ``unsup_weight``), named ``<term>_unsup``."""
        losses, _ = self.strong_view_losses(batch)
        return {f"{name}_unsup": value for name, value in losses.items()}

    def strong_view_losses(
        self, batch: UnlabeledBatch, return_attn: bool = False
    ) -> Tuple[Dict[str, torch.Tensor], Dict]:
        """The student's losses on the mixed strong views (``loss_entropy`` included) and its
        outputs (with CMSAM's attention when ``return_attn``)."""
        losses, outputs = self.model.losses(
            batch.strong_mixed,
            batch.targets,
            labeled=False,
            weights=batch.weights,
            absent=batch.absent,
            feature_dropout=self.feature_dropout,
            return_attn=return_attn,
        )
        if self.entropy_weight > 0:
            losses["loss_entropy"] = self.entropy_weight * prediction_entropy(outputs)
        return losses, outputs


class SemiSupervisedStep(SimpleTrainer):
    """The inner trainer of :class:`HierVLTrainer`: the step described in the module docstring."""

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
        class_prior: Optional[torch.Tensor] = None,
        unsup_weight: float,
        unsup_start_iter: int,
        unsup_rampup_iters: int = 0,
        teacher_flip: bool = False,
        cutmix_prob: float,
        amp_dtype: Optional[torch.dtype],
        clip_gradients: Optional[Dict],
        mix_loader: Optional[ResumableLoader] = None,
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
            class_prior: ``[C]`` class frequencies of the labelled pixels: the teacher's
                probabilities are aligned to it before pseudo-labelling (None = no alignment).
            unsup_weight: weight of the unlabelled loss.
            unsup_start_iter: first iteration with unlabelled losses.
            unsup_rampup_iters: iterations over which that weight rises from 0 (Gaussian
                ramp-up ``exp(-5 (1 - x)^2)`` from ``unsup_start_iter``; 0 = at once).
            teacher_flip: average the teacher's predictions on the weak view and its mirror.
            cutmix_prob: probability of a CutMix box per unlabelled image.
            amp_dtype: autocast dtype, or None for full precision.
            clip_gradients: ``{"clip_type", "clip_value", "norm_type"}`` or None.
            mix_loader: the second unlabelled stream whose batches give the CutMix boxes
                (None: no CutMix).
        """
        super().__init__(objective, labeled_loader, optimizer)
        self.student = student
        self.teacher = teacher
        self.labeled_loader = labeled_loader
        self.unlabeled_loader = unlabeled_loader
        self.mix_loader = mix_loader
        device = next(student.parameters()).device
        self.device = device
        self.pixel_mean = torch.tensor(pixel_mean, device=device).view(-1, 1, 1)
        self.pixel_std = torch.tensor(pixel_std, device=device).view(-1, 1, 1)
        self.ema_momentum = ema_momentum
        self.pseudo_label_mode = pseudo_label_mode
        self.conf_threshold = conf_threshold
        self.class_balanced_ratio = class_balanced_ratio
        self.class_prior = class_prior
        self.unsup_weight = unsup_weight
        self.unsup_start_iter = unsup_start_iter
        self.unsup_rampup_iters = unsup_rampup_iters
        self.teacher_flip = teacher_flip
        self.cutmix_prob = cutmix_prob
        self.amp_dtype = amp_dtype
        self.grad_scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
        self.clip_gradients = clip_gradients

    # ---- pieces of the step, overridable by projects -----------------------------------
    def autocast(self):
        return torch.autocast(
            self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
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
        _, _, h, w = weak.shape
        prob = self.cutmix_prob if mix_batch is not None else 0.0
        masks = sample_cutmix_masks(n, h, w, prob=prob)
        boxed = masks.flatten(1).any(1)
        # The teacher sees the batch and the mix partners whose box is used.
        taught = torch.cat([torch.arange(n), n + torch.nonzero(boxed).flatten()])
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
        targets, weights = finalize_pseudo_labels(
            cutmix(labels[:n], labels[partner], masks),
            cutmix(conf[:n], conf[partner], masks),
            cutmix(ignore[:n], ignore[mix_index], masks),
            mode=self.pseudo_label_mode,
            threshold=threshold,
        )
        # A class is ruled out where the teacher is as sure of its absence at every pixel as a
        # kept pixel is of its label (METHOD §8); a class with target pixels is never absent.
        absent = peak < 1.0 - self.conf_threshold
        for i in range(n):
            absent[i, targets[i][(targets[i] >= 0) & (targets[i] < absent.shape[1])]] = False
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
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        if stats:
            get_event_storage().put_scalars(**stats)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)
        if self.clip_gradients is not None:
            clip_gradients(
                [p for g in self.optimizer.param_groups for p in g["params"]], **self.clip_gradients
            )
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        if self.teacher is not None:
            ema_update(self.teacher, self.student, ema_momentum(self.iter, self.ema_momentum))

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


class HierVLTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the semi-supervised step, EMA teacher, resumable data streams,
    optimiser groups, poly schedule and atomic checkpoints holding the teacher.

    Checkpoints hold: ``model`` (student), ``teacher``, ``trainer`` (iteration, optimiser,
    grad scaler, scheduler and RNG states through hooks), ``data_labeled`` /
    ``data_unlabeled`` / ``data_unlabeled_mix`` (CutMix's mix stream, when ``SEMI.CUTMIX_PROB``
    > 0) (stream seed and position). ``SEMI.ENABLED`` False: supervised only, no teacher.
    """

    objective_class = SemiSupervisedObjective
    step_class = SemiSupervisedStep

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        student = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, student)
        seed = self.data_seed(cfg)
        labeled_loader = self.build_train_loader(cfg, seed=seed)
        # Load the test splits now: a broken one (a missing file, a mask not of its image's
        # size) stops the run before training, not at the first evaluation.
        for name in cfg.DATASETS.TEST:
            DatasetCatalog.get(name)
        semi = cfg.SEMI.ENABLED
        unlabeled_loader = self.build_unlabeled_loader(cfg, seed=seed + 1) if semi else None
        # CutMix partners: a second, independent draw from the unlabelled data (its own seed).
        mix = semi and cfg.SEMI.CUTMIX_PROB > 0
        mix_loader = self.build_unlabeled_loader(cfg, seed=seed + 2) if mix else None
        self.student = student
        self.teacher = build_teacher(student) if semi else None
        objective = wrap_ddp(self.build_objective(cfg, student))
        self._trainer = self.build_step(
            cfg,
            objective,
            student,
            self.teacher,
            labeled_loader,
            unlabeled_loader,
            optimizer,
            mix_loader=mix_loader,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointables = {"trainer": weakref.proxy(self), "data_labeled": labeled_loader}
        if semi:
            self._teacher_state = ModuleState(self.teacher)
            checkpointables["teacher"] = self._teacher_state
            checkpointables["data_unlabeled"] = unlabeled_loader
        if mix_loader is not None:
            checkpointables["data_unlabeled_mix"] = mix_loader
        self.checkpointer = AtomicCheckpointer(student, cfg.OUTPUT_DIR, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    # ---- builders ------------------------------------------------------------------------
    @staticmethod
    def data_seed(cfg: CfgNode) -> int:
        """Seed of the data streams: ``cfg.SEED`` when >= 0, else one shared by all ranks."""
        return cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_hiervl_optimizer(cfg, model, backbone_prefixes=BACKBONE_MODULES)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        return build_hiervl_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode, seed: int = 0) -> ResumableLoader:
        """The labelled stream: ``DATASETS.TRAIN`` through ``INPUT.DATASET_MAPPER_NAME``."""
        return build_resumable_loader(
            cfg.DATASETS.TRAIN,
            build_dataset_mapper(cfg, cfg.INPUT.DATASET_MAPPER_NAME, is_train=True),
            global_batch=cfg.SOLVER.IMS_PER_BATCH,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            seed=seed,
        )

    @classmethod
    def build_unlabeled_loader(cls, cfg: CfgNode, seed: int = 1) -> ResumableLoader:
        """An unlabelled stream: ``SEMI.UNLABELED_DATASETS`` through the mapper
        ``SEMI.DATASET_MAPPER_NAME`` (the trainer builds two: the batches and, with CutMix,
        their mix partners, with different seeds)."""
        if not cfg.SEMI.UNLABELED_DATASETS:
            raise ValueError("SEMI.ENABLED is True but SEMI.UNLABELED_DATASETS is empty")
        return build_resumable_loader(
            cfg.SEMI.UNLABELED_DATASETS,
            build_dataset_mapper(cfg, cfg.SEMI.DATASET_MAPPER_NAME, is_train=True),
            global_batch=cfg.SEMI.IMS_PER_BATCH_UNLABELED,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            seed=seed,
        )

    @classmethod
    def objective_kwargs(cls, cfg: CfgNode) -> Dict:
        """Keyword arguments of :attr:`objective_class` read from ``cfg``."""
        return {
            "entropy_weight": cfg.SEMI.ENTROPY_WEIGHT,
            "feature_dropout": cfg.SEMI.FEATURE_DROPOUT,
        }

    @classmethod
    def build_objective(cls, cfg: CfgNode, student: nn.Module) -> nn.Module:
        return cls.objective_class(student, **cls.objective_kwargs(cfg))

    @classmethod
    def class_prior(cls, cfg: CfgNode) -> torch.Tensor:
        """Class frequencies of the labelled pixels of ``DATASETS.TRAIN`` (distribution
        alignment's target), read once from their masks."""
        files = [
            d["sem_seg_file_name"]
            for name in cfg.DATASETS.TRAIN
            for d in DatasetCatalog.get(name)
            if d.get("sem_seg_file_name")
        ]
        ignore = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("ignore_label", 255)
        prior = class_pixel_prior(files, cfg.MODEL.HIERVL.NUM_CLASSES, ignore_label=ignore)
        logger.info(
            "Distribution alignment: class prior from %d labelled masks: %s",
            len(files),
            ", ".join(f"{p:.3f}" for p in prior.tolist()),
        )
        return prior.float()

    @classmethod
    def step_kwargs(cls, cfg: CfgNode) -> Dict:
        """Keyword arguments of :attr:`step_class` read from ``cfg``."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        amp_dtype = None
        if cfg.SOLVER.AMP.ENABLED:
            if cfg.SOLVER.AMP.DTYPE not in AMP_DTYPES:
                raise ValueError(f"SOLVER.AMP.DTYPE must be one of {sorted(AMP_DTYPES)}")
            amp_dtype = AMP_DTYPES[cfg.SOLVER.AMP.DTYPE]
        return {
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "ema_momentum": cfg.SEMI.EMA_MOMENTUM,
            "pseudo_label_mode": cfg.SEMI.PSEUDO_LABEL_MODE,
            "conf_threshold": cfg.SEMI.CONF_THRESHOLD,
            "class_balanced_ratio": cfg.SEMI.CLASS_BALANCED_RATIO,
            "class_prior": cls.class_prior(cfg) if cfg.SEMI.DISTRIBUTION_ALIGNMENT else None,
            "unsup_weight": cfg.SEMI.UNSUP_WEIGHT,
            "unsup_start_iter": cfg.SEMI.UNSUP_START_ITER,
            "unsup_rampup_iters": cfg.SEMI.UNSUP_RAMPUP_ITERS,
            "teacher_flip": cfg.SEMI.TEACHER_FLIP,
            "cutmix_prob": cfg.SEMI.CUTMIX_PROB,
            "amp_dtype": amp_dtype,
            "clip_gradients": (
                {
                    "clip_type": clip.CLIP_TYPE,
                    "clip_value": clip.CLIP_VALUE,
                    "norm_type": clip.NORM_TYPE,
                }
                if clip.ENABLED
                else None
            ),
        }

    @classmethod
    def build_step(
        cls,
        cfg,
        objective,
        student,
        teacher,
        labeled_loader,
        unlabeled_loader,
        optimizer,
        mix_loader=None,
    ) -> SemiSupervisedStep:
        return cls.step_class(
            objective,
            student,
            teacher,
            labeled_loader,
            unlabeled_loader,
            optimizer,
            mix_loader=mix_loader,
            **cls.step_kwargs(cfg),
        )

    def build_hooks(self):
        cfg = self.cfg
        ret = [
            hooks.IterationTimer(),
            hooks.LRScheduler(),
            # before the checkpointer: no checkpoint is written from broken weights
            FiniteWeightsHook(self.student, self.checkpointer),
            RNGStateHook(cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.MAX_ITER),
        ]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))

        def test_and_save_results():
            self._last_eval_results = self.evaluate()
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.TEST.EVAL_PERIOD, test_and_save_results))
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), period=20))
        # OUTPUT_DIR's lock (taken by resume_or_load) ends with the training, however it ends
        output_dir = cfg.OUTPUT_DIR
        ret.append(hooks.CallbackHook(after_train=lambda _: release_output_dir(output_dir)))
        return ret

    # ---- checkpoints -----------------------------------------------------------------------
    def resume_or_load(self, resume: bool = True) -> None:
        """Resume from ``OUTPUT_DIR``'s last checkpoint (all states), or load ``MODEL.WEIGHTS``
        into the student; the teacher starts as a copy of the student unless resumed.

        First ``OUTPUT_DIR`` is claimed (:func:`~hiervl.engine.checkpoint.claim_output_dir`):
        locked for this run, cleaned of dead runs' temporary files, and refused when it holds
        another run's checkpoints that this run would overwrite (``SOLVER.OVERWRITE_OUTPUT_DIR``
        allows it). The checkpoint must fit the model whole; ``MODEL.WEIGHTS_ALLOW_PARTIAL``
        allows a partial ``MODEL.WEIGHTS`` (never a partial resume).
        """
        cfg = self.cfg
        claim_output_dir(
            cfg.OUTPUT_DIR,
            resume=resume,
            overwrite=cfg.SOLVER.OVERWRITE_OUTPUT_DIR,
            main_process=comm.is_main_process(),
        )
        resuming = resume and self.checkpointer.has_checkpoint()
        self.checkpointer.allow_partial = cfg.MODEL.WEIGHTS_ALLOW_PARTIAL and not resuming
        self.checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
        if self.teacher is not None and not self._teacher_state.loaded:
            self.teacher.load_state_dict(self.student.state_dict())

    # ---- evaluation ------------------------------------------------------------------------
    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        mapper = build_dataset_mapper(cfg, cfg.INPUT.DATASET_MAPPER_NAME, is_train=False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None):
        """HierVL's ``SemSegEvaluator`` with the per-class IoU table."""
        return build_semseg_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test_model(cls, cfg: CfgNode, model: nn.Module, tag: str = "") -> OrderedDict:
        """Evaluate ``model`` on ``DATASETS.TEST``; evaluator files go to ``inference/<tag>``."""
        evaluators = [
            cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference", tag, name))
            for name in cfg.DATASETS.TEST
        ]
        return cls.test(cfg, model, evaluators)

    def evaluate(self) -> OrderedDict:
        """Evaluate the teacher (or the student when there is none); with
        ``MODEL.HIERVL.TEST.EVAL_STUDENT`` also the student, its metrics under ``student/``."""
        hv_test = self.cfg.MODEL.HIERVL.TEST
        if self.teacher is None or not hv_test.USE_TEACHER:
            return self.test_model(self.cfg, self.student, "student")
        results = self.test_model(self.cfg, self.teacher, "teacher")
        if hv_test.EVAL_STUDENT:
            student = self.test_model(self.cfg, self.student, "student")
            results = OrderedDict(results)
            results.update({f"student/{k}": v for k, v in student.items()})
        return results
