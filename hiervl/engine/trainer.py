"""``HierVLTrainer``: detectron2's ``DefaultTrainer`` wired to the semi-supervised step.

What it builds from the config: the student and its EMA teacher, the labelled, unlabelled and
CutMix mix streams (:mod:`hiervl.engine.loaders`), the objective
(:class:`~hiervl.engine.objective.SemiSupervisedObjective`, DDP-wrapped) and the step
(:class:`~hiervl.engine.semi_step.SemiSupervisedStep`), optimiser groups and the poly
schedule, checkpoints holding the teacher and every stream's position, hooks, evaluation.
"""

import logging
import os
import weakref
from collections import OrderedDict
from typing import Dict, Optional

import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn

from hiervl.data.dataset_mappers import build_dataset_mapper
from hiervl.evaluation import build_semseg_evaluator
from hiervl.utils.checkpoint import TEACHER_CHECKPOINT_KEY, AtomicCheckpointer, ModuleState

from .loaders import ResumableLoader, build_resumable_loader
from .ema import build_teacher
from .hooks import FiniteWeightsHook, RNGStateHook
from .objective import SemiSupervisedObjective
from .optim import build_hiervl_lr_scheduler, build_hiervl_optimizer
from .output_dir import claim_output_dir, release_output_dir
from .semi import class_pixel_prior
from .semi_step import SemiSupervisedStep

__all__ = ["HierVLTrainer"]

logger = logging.getLogger(__name__)


AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


class HierVLTrainer(DefaultTrainer):
    """``DefaultTrainer`` with the semi-supervised step, EMA teacher, resumable data streams,
    optimiser groups, poly schedule and atomic checkpoints holding the teacher.

    Checkpoints hold: ``model`` (student), ``teacher``, ``trainer`` (iteration, optimiser,
    grad scaler, scheduler and RNG states through hooks), ``data_labeled`` /
    ``data_unlabeled`` / ``data_unlabeled_mix`` (CutMix's mix stream, when ``SEMI.CUTMIX_PROB``
    > 0) (stream seed and position). ``SEMI.ENABLED`` False: supervised only, no teacher.

    ``__init__`` replaces ``DefaultTrainer.__init__``, which builds one loader, wraps the model
    in DDP and makes its own ``SimpleTrainer`` / ``AMPTrainer`` and ``DetectionCheckpointer``:
    here the step needs three streams and the teacher, DDP wraps the objective (the student
    runs on two batches in one forward), and the checkpointer writes atomically and holds the
    teacher and the streams' positions. The rest of ``DefaultTrainer`` (``train``, hooks,
    ``test``, ``build_model``, writers, state) is used as it is.
    """

    objective_class = SemiSupervisedObjective
    step_class = SemiSupervisedStep

    def __init__(self, cfg: CfgNode):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
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
        # DDP wraps the objective, which runs the student on both batches in one forward.
        # CPU processes (gloo) take no device ids; CUDA: this rank's (create_ddp_model's).
        objective = create_ddp_model(
            self.build_objective(cfg, student),
            broadcast_buffers=False,
            find_unused_parameters=True,
            **({} if next(student.parameters()).is_cuda else {"device_ids": None}),
        )
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
            checkpointables[TEACHER_CHECKPOINT_KEY] = self._teacher_state
            checkpointables["data_unlabeled"] = unlabeled_loader
        if mix_loader is not None:
            checkpointables["data_unlabeled_mix"] = mix_loader
        self.checkpointer = AtomicCheckpointer(student, cfg.OUTPUT_DIR, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.register_hooks(self.build_hooks())

    # ---- builders ------------------------------------------------------------------------
    @staticmethod
    def auto_scale_workers(cfg: CfgNode, num_workers: int) -> CfgNode:
        """detectron2's scaling to ``num_workers`` processes of a config written for
        ``SOLVER.REFERENCE_WORLD_SIZE`` (0 = off), which keeps the per-process batch: the
        labelled batch and ``BASE_LR`` × scale, iterations and periods ÷ scale; and the same
        for the unlabelled stream: ``SEMI.IMS_PER_BATCH_UNLABELED`` × scale, the start and the
        ramp-up of the unlabelled losses (``SEMI.UNSUP_START_ITER``,
        ``SEMI.UNSUP_RAMPUP_ITERS``) ÷ scale, as ``SOLVER.WARMUP_ITERS``."""
        reference = cfg.SOLVER.REFERENCE_WORLD_SIZE
        scaled = DefaultTrainer.auto_scale_workers(cfg, num_workers)
        if scaled is cfg:
            return cfg
        if cfg.SEMI.IMS_PER_BATCH_UNLABELED % reference != 0:
            raise ValueError(
                f"SEMI.IMS_PER_BATCH_UNLABELED {cfg.SEMI.IMS_PER_BATCH_UNLABELED} is not "
                f"divisible by SOLVER.REFERENCE_WORLD_SIZE {reference}"
            )
        scale = num_workers / reference
        frozen = scaled.is_frozen()
        scaled.defrost()
        semi = scaled.SEMI
        semi.IMS_PER_BATCH_UNLABELED = int(round(semi.IMS_PER_BATCH_UNLABELED * scale))
        semi.UNSUP_START_ITER = int(round(semi.UNSUP_START_ITER / scale))
        semi.UNSUP_RAMPUP_ITERS = int(round(semi.UNSUP_RAMPUP_ITERS / scale))
        logger.info(
            "Auto-scaling the unlabelled stream to batch_size=%d, unlabelled losses from "
            "iteration %d, ramp-up %d iterations",
            semi.IMS_PER_BATCH_UNLABELED,
            semi.UNSUP_START_ITER,
            semi.UNSUP_RAMPUP_ITERS,
        )
        if frozen:
            scaled.freeze()
        return scaled

    @staticmethod
    def data_seed(cfg: CfgNode) -> int:
        """Seed of the data streams: ``cfg.SEED`` when >= 0, else one shared by all ranks."""
        return cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_hiervl_optimizer(cfg, model)

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
        prior = class_pixel_prior(files, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, ignore_label=ignore)
        logger.info(
            "Distribution alignment: class prior from %d labelled masks: %s",
            len(files),
            ", ".join(f"{p:.3f}" for p in prior.tolist()),
        )
        return prior.float()

    @classmethod
    def step_kwargs(cls, cfg: CfgNode) -> Dict:
        """Keyword arguments of :attr:`step_class` read from ``cfg``."""
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
            "rule_out_absent": cfg.SEMI.RULE_OUT_ABSENT_CLASSES,
            "rule_out_per_pixel": cfg.SEMI.RULE_OUT_CLASSES_PER_PIXEL,
            "class_prior": cls.class_prior(cfg) if cfg.SEMI.DISTRIBUTION_ALIGNMENT else None,
            "unsup_weight": cfg.SEMI.UNSUP_WEIGHT,
            "unsup_start_iter": cfg.SEMI.UNSUP_START_ITER,
            "unsup_rampup_iters": cfg.SEMI.UNSUP_RAMPUP_ITERS,
            "teacher_flip": cfg.SEMI.TEACHER_FLIP,
            "cutmix_prob": cfg.SEMI.CUTMIX_PROB,
            "precision": amp_dtype,
            "unlabeled_ground_truth": cfg.SEMI.UNLABELED_GROUND_TRUTH,
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

        First ``OUTPUT_DIR`` is claimed (:func:`~hiervl.engine.output_dir.claim_output_dir`):
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
        test_cfg = self.cfg.MODEL.HIERVL.TEST
        if self.teacher is None or not test_cfg.USE_TEACHER:
            return self.test_model(self.cfg, self.student, "student")
        results = self.test_model(self.cfg, self.teacher, "teacher")
        if test_cfg.EVAL_STUDENT:
            student = self.test_model(self.cfg, self.student, "student")
            results = OrderedDict(results)
            results.update({f"student/{k}": v for k, v in student.items()})
        return results
