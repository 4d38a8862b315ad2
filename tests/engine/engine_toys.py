"""Stand-ins for the engine tests: a tiny segmentation META_ARCH with HierVL's forward contract
and a tiny on-disk dataset (coloured squares on a background), both built in milliseconds."""

import os
from typing import Dict, List

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from hiervl.config import add_hiervl_config

TOY_ARCH = "EngineToySegModel"
TOY_CLASSES = ["background", "red", "green"]


class EngineToySegModel(nn.Module):
    """HierVL's contract on a 3x3 conv: losses of labelled dicts in training (``forward``) and
    of pseudo-labelled batches (``losses``), ``[{"sem_seg"}]`` in inference, ``semantic_probs``
    for the teacher. A float buffer counts training forwards so that the EMA of buffers is
    exercised."""

    @configurable
    def __init__(self, *, num_classes: int, pixel_mean, pixel_std):
        super().__init__()
        self.num_classes = num_classes  # as HierVL's (the oracle diagnosis reads it)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.head = nn.Conv2d(8, num_classes, 1)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.register_buffer("forward_count", torch.zeros(()))

    @classmethod
    def from_config(cls, cfg):
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.norm(self.conv(images))))

    @torch.no_grad()
    def semantic_probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(1)

    def forward(self, batched_inputs: List[Dict]):
        if not self.training:
            images = torch.stack([self._normalize(x["image"]) for x in batched_inputs])
            out = []
            for x, lg in zip(batched_inputs, self.logits(images)):
                h, w = x.get("height", lg.shape[-2]), x.get("width", lg.shape[-1])
                out.append(
                    {"sem_seg": F.interpolate(lg[None], (h, w), mode="bilinear")[0].softmax(0)}
                )
            return out
        images = [x["image"] for x in batched_inputs]
        losses, _ = self.losses(images, [x["sem_seg"] for x in batched_inputs], labeled=True)
        return losses

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.float() - self.pixel_mean) / self.pixel_std

    def losses(self, images, sem_seg, *, labeled, weights=None, absent=None, **kwargs):
        """``HierVL.losses``' contract: per-pixel weighted cross-entropy (``labeled`` and
        ``absent`` change nothing here), no outputs."""
        self.forward_count += 1
        logits = self.logits(torch.stack([self._normalize(x) for x in images]))
        per_image = []
        for i, (lg, target) in enumerate(zip(logits, sem_seg)):
            target = target.long()
            weight = torch.ones(target.shape) if weights is None else weights[i].float()
            ce = F.cross_entropy(lg[None], target[None], ignore_index=255, reduction="none")[0]
            valid = (target != 255).float()
            per_image.append((ce * weight * valid).sum() / valid.sum().clamp(min=1))
        return {"loss_ce": torch.stack(per_image).mean()}, {}


if TOY_ARCH not in META_ARCH_REGISTRY:
    META_ARCH_REGISTRY.register(EngineToySegModel)


def make_toy_dataset(root: str, count: int, size: int = 20, seed: int = 0) -> List[dict]:
    """Write ``count`` images with one red and one green square and their masks."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    dicts = []
    for i in range(count):
        image = np.full((size, size, 3), 40, np.uint8)
        mask = np.zeros((size, size), np.uint8)
        for cls, colour in ((1, (220, 30, 30)), (2, (30, 220, 30))):
            s = int(rng.integers(4, 9))
            y, x = rng.integers(0, size - s, 2)
            image[y : y + s, x : x + s] = colour
            mask[y : y + s, x : x + s] = cls
        image = np.clip(image + rng.integers(-15, 15, image.shape), 0, 255).astype(np.uint8)
        img_path, mask_path = f"{root}/img{i}.png", f"{root}/mask{i}.png"
        cv2.imwrite(img_path, image[:, :, ::-1])
        cv2.imwrite(mask_path, mask)
        dicts.append(
            {
                "file_name": img_path,
                "sem_seg_file_name": mask_path,
                "image_id": i,
                "height": size,
                "width": size,
            }
        )
    return dicts


def register_toy(prefix: str, root: str) -> Dict[str, str]:
    """Register ``<prefix>_labeled`` (4), ``_unlabeled`` (6), ``_val`` (3) toy splits."""
    names = {}
    for split, count, seed in (("labeled", 4, 0), ("unlabeled", 6, 1), ("val", 3, 2)):
        name = f"{prefix}_{split}"
        names[split] = name
        if name in DatasetCatalog.list():
            continue
        dicts = make_toy_dataset(os.path.join(root, split), count, seed=seed)
        if split == "unlabeled":
            dicts = [{k: v for k, v in d.items() if k != "sem_seg_file_name"} for d in dicts]
        DatasetCatalog.register(name, lambda d=dicts: d)
        MetadataCatalog.get(name).set(
            stuff_classes=TOY_CLASSES,
            stuff_colors=[(40, 40, 40), (220, 30, 30), (30, 220, 30)],
            ignore_label=255,
            evaluator_type="sem_seg",
        )
    return names


def toy_config(root: str, output_dir: str, **solver):
    """A config of the toy model on the toy data (CPU, crops 16, batches 2 + 2)."""
    names = register_toy("engine_toy_" + str(abs(hash(root)) % 10**8), root)
    cfg = get_cfg()
    add_hiervl_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = TOY_ARCH
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 3
    cfg.DATASETS.TRAIN = (names["labeled"],)
    cfg.SEMI.UNLABELED_DATASETS = (names["unlabeled"],)
    cfg.DATASETS.TEST = (names["val"],)
    cfg.INPUT.CROP.SIZE = (16, 16)
    cfg.INPUT.RESIZE_RATIO_RANGE = [0.7, 1.3]
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SEMI.IMS_PER_BATCH_UNLABELED = 2
    cfg.SEMI.CONF_THRESHOLD = 0.4
    cfg.SEMI.CUTMIX_PROB = 1.0
    cfg.SEMI.ENTROPY_WEIGHT = 0.0  # the toy has no mask-classification outputs to take it of
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WARMUP_ITERS = 2
    cfg.SOLVER.MAX_ITER = 4
    cfg.SOLVER.CHECKPOINT_PERIOD = 1000
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 7
    cfg.OUTPUT_DIR = output_dir
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def ddp_train_worker(root: str, output_dir: str, result_file: str, max_iter: int) -> None:
    """Train the toy config in the current process group; rank 0 writes the student's and the
    teacher's weights and, per rank, whether its teacher equals rank 0's."""
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng

    from hiervl.engine import HierVLTrainer

    cfg = toy_config(root, output_dir, MAX_ITER=max_iter)
    cfg.SEMI.CUTMIX_PROB = 0.0
    seed_all_rng(cfg.SEED)
    trainer = HierVLTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    teachers = comm.all_gather({k: v.clone() for k, v in trainer.teacher.state_dict().items()})
    same = [all(torch.equal(t[k], teachers[0][k]) for k in t) for t in teachers]
    if comm.is_main_process():
        torch.save(
            {
                "student": trainer.student.state_dict(),
                "teacher": teachers[0],
                "same": same,
                "world_size": comm.get_world_size(),
            },
            result_file,
        )
