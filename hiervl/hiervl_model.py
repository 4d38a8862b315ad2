"""The HierVL meta-architecture (METHOD.md §1-6): wires the parts, nothing else.

image -> CLIP image encoder -> HSQG (class queries, relevance) -> pixel decoder with CMSAM ->
dual-query decoder -> set criterion + regularisers (training) or semantic map (inference).
"""

import functools
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import nn

from .data.datasets.class_descriptions import dataset_class_descriptions
from .modeling.clip import CLIPImageEncoder, PromptTextEncoder, build_open_clip_from_config
from .modeling.criterion import HierVLCriterion, semantic_targets
from .modeling.heads import HSQG, build_transformer_decoder
from .modeling.inference import InferenceClasses, SemSegInference, predict_window
from .modeling.pixel_decoder import build_pixel_decoder
from .modeling.regularizers import AnchorHead, prompt_losses, vision_language_losses

__all__ = ["HierVL"]

logger = logging.getLogger(__name__)


def _check_test_classes(test_datasets: Sequence[str], class_names: Sequence[str]) -> None:
    """Every registered test split must have the classes the model predicts over, in order:
    the evaluator compares the prediction's class ids with the split's."""
    for name in test_datasets:
        test_classes = MetadataCatalog.get(name).get("stuff_classes", None)
        if test_classes is not None and list(test_classes) != list(class_names):
            raise ValueError(
                f"DATASETS.TEST {name!r} has the classes {list(test_classes)}, but the model "
                f"predicts over {list(class_names)}: set MODEL.HIERVL.TEST.CLASS_NAMES to the "
                f"test split's class list (names of training classes keep their classifier)"
            )


@META_ARCH_REGISTRY.register()
class HierVL(nn.Module):
    """Semi-supervised semantic segmentation with hierarchical vision-language anchors."""

    @configurable
    def __init__(
        self,
        *,
        image_encoder: CLIPImageEncoder,
        text_encoder: PromptTextEncoder,
        hsqg: Optional[HSQG],
        pixel_decoder: nn.Module,
        decoder: nn.Module,
        criterion: HierVLCriterion,
        class_names: Sequence[str],
        class_descriptions: Optional[Sequence[Sequence[str]]] = None,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        ignore_value: int = 255,
        anchor_head: Optional[nn.Module] = None,
        relevance_weight: float = 1.0,
        topo_weight: float = 1.0,
        anchor_weight: float = 1.0,
        anchor_lambda: float = 1.0,
        masked_consistency_weight: float = 1.0,
        pixel_text_weight: float = 0.5,
        pixel_text_temperature: float = 0.07,
        semseg_inference: Optional[SemSegInference] = None,
        test_class_names: Optional[Sequence[str]] = None,
    ):
        """
        Args:
            image_encoder: CLIP image encoder ``E_I`` (fine-tuned) -> ``res2..res5``, ``global``.
            text_encoder: prompted, frozen CLIP text encoder -> ``t̂ [C, Dt]``, ``t⁰ [C, Dt]``.
            hsqg: hierarchical query generator, or None (no class queries and no CMSAM).
            pixel_decoder: ``(features, queries [B,Q,D], keep [B,Q]) -> (mask_features
                [B,Dm,H/4,W/4], multi-scale features (strides 32/16/8), refined queries)``.
            decoder: transformer decoder (``DualQueryTransformerDecoder``); its
                ``num_class_rows`` says whether it takes the class rows.
            criterion: set losses of the decoder outputs.
            class_names: the ``C`` class names of the training data.
            class_descriptions: optional per-class description lists (HVLFormer prompts).
            pixel_mean / pixel_std: per-channel normalisation of 0-255 RGB input.
            size_divisibility: padded inputs are multiples of this (a multiple of the patch).
            ignore_value: label of ignored pixels.
            anchor_head: the MLP ``h`` of Eq. 4 (None = identity / term off).
            relevance_weight: BCE of the relevance estimator on labelled images (0 = off).
            topo_weight / anchor_weight: Eq. 3 / Eq. 4 weights (0 = off); anchor_lambda: λ.
            masked_consistency_weight / pixel_text_weight: Eq. 6 / Eq. 7 weights (0 = off).
            pixel_text_temperature: τ of Eq. 7.
            semseg_inference: sliding windows and test-time augmentation of ``inference``
                (default: ``SemSegInference(crop_size=(512, 512), stride=(256, 256))``).
            test_class_names: the classes ``inference`` predicts over (None: ``class_names``);
                see ``set_inference_classes``.
        """
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.hsqg = hsqg
        self.pixel_decoder = pixel_decoder
        self.decoder = decoder
        self.criterion = criterion
        self.anchor_head = anchor_head
        self.class_names = [str(n) for n in class_names]
        self.class_descriptions = (
            None if class_descriptions is None else [list(d) for d in class_descriptions]
        )
        self.num_classes = len(self.class_names)
        if criterion.num_classes != self.num_classes:
            raise ValueError(
                f"{self.num_classes} class names but the criterion has {criterion.num_classes} "
                f"classes (MODEL.SEM_SEG_HEAD.NUM_CLASSES)"
            )
        self.class_queries = getattr(decoder, "num_class_rows", 0) > 0
        if self.class_queries and hsqg is None:
            raise ValueError("class rows in the decoder need an HSQG")
        patch = image_encoder.size_divisibility
        if size_divisibility % patch != 0 or size_divisibility % 32 != 0:
            raise ValueError(
                f"size_divisibility {size_divisibility} must be a multiple of the patch size "
                f"{patch} and of 32 (stride of res5)"
            )
        self.size_divisibility = size_divisibility
        self.ignore_value = ignore_value
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.relevance_weight = relevance_weight
        self.topo_weight = topo_weight
        self.anchor_weight = anchor_weight
        self.anchor_lambda = anchor_lambda
        self.masked_consistency_weight = masked_consistency_weight
        self.pixel_text_weight = pixel_text_weight
        self.pixel_text_temperature = pixel_text_temperature
        if semseg_inference is None:
            semseg_inference = SemSegInference(crop_size=(512, 512), stride=(256, 256))
        self.semseg_inference = semseg_inference
        self.set_inference_classes(test_class_names)
        if hsqg is None and masked_consistency_weight <= 0 and pixel_text_weight <= 0:
            # Nothing reads the global embedding or the dense text-space tokens: freeze the
            # ViT's output head (ln_post, proj) so that no trainable parameter is left unused.
            visual = image_encoder.visual
            for p in list(visual.ln_post.parameters()) + [visual.proj]:
                p.requires_grad_(False)
            logger.info("HierVL: no HSQG and no Eq. 6-7 losses; CLIP's ln_post / proj frozen")

    @classmethod
    def from_config(cls, cfg) -> dict:
        hiervl_cfg = cfg.MODEL.HIERVL
        if not cfg.DATASETS.TRAIN:
            raise ValueError("DATASETS.TRAIN is empty: the class names come from its metadata")
        metadata = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        class_names = metadata.get("stuff_classes", None)
        if not class_names:
            raise ValueError(
                f"dataset {cfg.DATASETS.TRAIN[0]!r} has no 'stuff_classes' metadata; register it "
                f"(import hiervl.data.datasets) before building the model"
            )
        num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
        if len(class_names) != num_classes:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.NUM_CLASSES={num_classes} but {cfg.DATASETS.TRAIN[0]!r} has "
                f"{len(class_names)} classes"
            )
        test_class_names = [str(n) for n in hiervl_cfg.TEST.CLASS_NAMES] or None
        _check_test_classes(cfg.DATASETS.TEST, test_class_names or list(class_names))
        loss = hiervl_cfg.LOSS
        clip_model = build_open_clip_from_config(cfg)
        # The loss weights decide here, and only here, which optional parts exist: the frozen
        # ViT copy of Eq. 6, the text-space projection phi of Eq. 2 and the MLP h of Eq. 4.
        image_encoder = CLIPImageEncoder(
            cfg, clip_model=clip_model, frozen_copy=loss.MASKED_CONSISTENCY_WEIGHT > 0
        )
        text_encoder = PromptTextEncoder(cfg, clip_model=clip_model)
        text_dim = text_encoder.embed_dim
        class_queries = hiervl_cfg.DECODER.CLASS_QUERIES_ENABLED
        hsqg = None
        if class_queries or hiervl_cfg.PIXEL_DECODER.CMSAM_ENABLED:
            hsqg = HSQG(cfg, text_dim=text_dim)
        num_levels = hsqg.num_levels if hsqg is not None else 1
        return {
            "image_encoder": image_encoder,
            "text_encoder": text_encoder,
            "hsqg": hsqg,
            "pixel_decoder": build_pixel_decoder(cfg, image_encoder.output_shape()),
            "decoder": build_transformer_decoder(
                cfg,
                num_classes=num_classes,
                text_dim=text_dim,
                num_class_rows=num_classes * num_levels if class_queries else 0,
                num_levels=num_levels,
                predict_embeds=loss.ALIGN_WEIGHT > 0,
            ),
            "criterion": HierVLCriterion(cfg),
            "class_names": list(class_names),
            "class_descriptions": dataset_class_descriptions(
                metadata, use_file=hiervl_cfg.CLIP.DATASET_DESCRIPTIONS
            ),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": hiervl_cfg.SIZE_DIVISIBILITY,
            "ignore_value": metadata.get("ignore_label", 255),
            "anchor_head": AnchorHead(dim=text_dim) if loss.ANCHOR_WEIGHT > 0 else None,
            "relevance_weight": loss.RELEVANCE_WEIGHT,
            "topo_weight": loss.TOPO_WEIGHT,
            "anchor_weight": loss.ANCHOR_WEIGHT,
            "anchor_lambda": loss.ANCHOR_LAMBDA,
            "masked_consistency_weight": loss.MASKED_CONSISTENCY_WEIGHT,
            "pixel_text_weight": loss.PIXEL_TEXT_WEIGHT,
            "pixel_text_temperature": loss.PIXEL_TEXT_TEMPERATURE,
            "semseg_inference": SemSegInference(cfg),
            "test_class_names": test_class_names,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- shared pieces ---------------------------------------------------------------------
    def text_embeddings(self) -> torch.Tensor:
        """``t̂ [C, Dt]``: normalised class embeddings with the learnable prompts."""
        return self.text_encoder(self.class_names, self.class_descriptions)

    # ---- class names at inference ----------------------------------------------------------
    def set_inference_classes(
        self,
        class_names: Optional[Sequence[str]] = None,
        class_descriptions: Optional[Sequence[Sequence[str]]] = None,
    ) -> None:
        """Make ``inference`` predict over ``class_names`` (None: the training classes).

        The text queries are built from the given names with the learned prompts, so HSQG's
        class rows and relevance gate follow the new list. The classifier ``W_cls`` keeps its
        output per training class: a training class's name (in any order) keeps it, other
        names are scored by the text similarity of each row's CLIP-space embedding
        (:func:`~hiervl.modeling.inference.row_class_probs`). ``semantic_probs`` (the
        teacher's pseudo-labels) always uses the training classes.

        Args:
            class_names: ``C'`` names, or None for the training classes.
            class_descriptions: ``C'`` lists of description variants of the names (HVLFormer
                prompts); None: a training class's own descriptions, none for other names.

        Raises:
            ValueError: see :meth:`~hiervl.modeling.inference.InferenceClasses.resolve`.
        """
        self.inference_classes = InferenceClasses.resolve(
            class_names,
            class_descriptions,
            training_names=self.class_names,
            training_descriptions=self.class_descriptions,
            can_score_new_names=getattr(self.decoder, "text_proj", None) is not None,
        )

    @property
    def inference_class_names(self) -> List[str]:
        """The ``C'`` class names ``inference`` predicts over."""
        return self.inference_classes.names

    def inference_text_embeddings(self) -> torch.Tensor:
        """``t̂ [C', Dt]`` of the classes ``inference`` predicts over."""
        classes = self.inference_classes
        return self.text_encoder(classes.names, classes.descriptions)

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        return (image.to(self.device).float() - self.pixel_mean) / self.pixel_std

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``[B, 3, H, W]`` (normalised: 0 = mean colour) to the size divisibility.

        An input that would leave the coarsest map (res5, stride 32) a single cell, i.e. at
        most 32x32 px, is padded to 64x64: GroupNorm cannot normalise one value per group.
        Callers crop the prediction back to ``H x W``, so any size >= 1 px works.
        """
        div = self.size_divisibility
        height, width = images.shape[-2:]
        target_h, target_w = height + (-height) % div, width + (-width) % div
        if target_h <= 32 and target_w <= 32:
            target_h = target_w = 64
        if (target_h, target_w) == (height, width):
            return images
        return F.pad(images, (0, target_w - width, 0, target_h - height))

    def encode_decode(
        self,
        images: torch.Tensor,
        text: torch.Tensor,
        presence: Optional[torch.Tensor] = None,
        feature_dropout: float = 0.0,
        return_attn: bool = False,
    ) -> Tuple[Dict, Optional[Dict], torch.Tensor]:
        """Encoder -> HSQG -> pixel decoder -> decoder on padded, normalised images.

        Args:
            images: ``[B, 3, H, W]``, H and W multiples of ``size_divisibility``.
            text: ``[C, Dt]`` class embeddings.
            presence: ``[B, C]`` bool ground-truth class presence (labelled images): it drives
                HSQG's queries and gate; None = the predicted relevance does.
            feature_dropout: channel-dropout probability on the encoder's feature maps before
                the pixel decoder (UniMatch's feature perturbation; the global embedding that
                HSQG reads is left as it is).
            return_attn: also put CMSAM's pixel -> text attention (its last block's, per
                level) in the outputs as ``cmsam_attn``: a list of ``[B, C·E, h, w]`` at strides
                32, 16, 8, or None without CMSAM.

        Returns:
            decoder outputs, the HSQG outputs (None without HSQG), and ``row_classes [K]``
            (class of each class row, -1 for instance rows).
        """
        features = self.image_encoder(images)
        if feature_dropout > 0:
            features = {
                k: v if k == "global" else F.dropout2d(v, feature_dropout, training=True)
                for k, v in features.items()
            }
        hsqg_out = None
        queries = keep = None
        if self.hsqg is not None:
            hsqg_out = self.hsqg(text, features["global"], presence)
            queries, keep = hsqg_out["queries"], hsqg_out["keep"]
        attn = None
        if return_attn:
            mask_features, multi_scale, refined, attn = self.pixel_decoder(
                features, queries, keep, return_attn=True
            )
        else:
            mask_features, multi_scale, refined = self.pixel_decoder(features, queries, keep)
        if self.class_queries:
            outputs = self.decoder(multi_scale, mask_features, refined, keep)
            class_rows = hsqg_out["row_class"]
        else:
            outputs = self.decoder(multi_scale, mask_features)
            class_rows = torch.zeros(0, dtype=torch.long, device=images.device)
        instance_rows = torch.full(
            (outputs["pred_logits"].shape[1] - class_rows.numel(),),
            -1,
            dtype=torch.long,
            device=images.device,
        )
        if return_attn:
            outputs["cmsam_attn"] = attn
        return outputs, hsqg_out, torch.cat([class_rows, instance_rows])

    # ---- training ----------------------------------------------------------------------------
    def forward(self, batched_inputs: List[Dict]):
        """detectron2's contract.

        Args:
            batched_inputs: detectron2 dicts. Training: labelled images, ``image`` uint8
                ``[3,H,W]`` and ``sem_seg`` long ``[H,W]`` (255 ignore). Inference: ``image``
                and optional ``height`` / ``width`` of the output.

        Returns:
            training: dict of weighted losses (:meth:`losses` with ``labeled=True``);
            inference: ``[{"sem_seg": [C, height, width], "relevance": [C]}]``.
        """
        if not self.training:
            return self.inference(batched_inputs)
        images = [x["image"] for x in batched_inputs]
        labels = [
            (
                x["sem_seg"]
                if "sem_seg" in x
                else torch.full(x["image"].shape[-2:], self.ignore_value, dtype=torch.long)
            )
            for x in batched_inputs
        ]
        losses, _ = self.losses(images, labels, labeled=True)
        return losses

    def losses(
        self,
        images: Sequence[torch.Tensor],
        sem_seg: Sequence[torch.Tensor],
        *,
        labeled: bool,
        weights: Optional[Sequence[torch.Tensor]] = None,
        absent: Optional[torch.Tensor] = None,
        ruled_out: Optional[torch.Tensor] = None,
        feature_dropout: float = 0.0,
        return_attn: bool = False,
    ) -> Tuple[Dict[str, torch.Tensor], Dict]:
        """Weighted losses of a batch of labelled images, or of pseudo-labelled ones.

        Args:
            images: ``B`` uint8 ``[3, H_i, W_i]`` 0-255 RGB (or a ``[B, 3, H, W]`` tensor);
                normalised, then zero-padded to ``size_divisibility``.
            sem_seg: ``B`` long ``[H_i, W_i]`` targets, 255 = ignore.
            labeled: True: ground truth. Its class presence drives HSQG and trains the
                relevance estimator (BCE), a class without a pixel is absent, and the prompt
                losses (Eq. 3-5, image-independent) are added. False: pseudo-labels
                (METHOD §8): predicted relevance, no relevance BCE, no prompt losses (the
                labelled batch of the step counts them), and only ``absent`` classes are known
                absent.
            weights: ``B`` float ``[H_i, W_i]`` per-pixel loss weights (confidence weights of
                pseudo-labels); None = 1.
            absent: ``[B, C]`` bool, pseudo-labels only: the classes known absent from each
                image (a class with target pixels never is); the class loss leaves out the rows
                whose "no object" target is unknown (``HierVLCriterion``). None: none known.
            ruled_out: ``[B, C, H, W]`` bool, pseudo-labels only: the pixels where each class
                is known not to be; a segment's mask learns "not here" on those of its class
                that have no label (``semantic_targets``). None: only labelled pixels count.
            feature_dropout: channel-dropout probability on the encoder's feature maps (see
                ``encode_decode``).
            return_attn: put CMSAM's attention ``cmsam_attn`` in the returned outputs.

        Returns:
            dict of weighted losses, and the decoder outputs (``pred_logits``, ``pred_masks``,
            ``keep``, ``aux_outputs`` per layer; ``cmsam_attn`` with ``return_attn``) for
            regularisers on the predictions (entropy, HVLFormer's CMCR).
        """
        if labeled and (absent is not None or ruled_out is not None):
            raise ValueError(
                "absent and ruled-out classes are for pseudo-labels: ground truth is complete"
            )
        div = self.size_divisibility
        images = ImageList.from_tensors([self._normalize(x) for x in images], div).tensor
        labels = [sem.to(self.device).long() for sem in sem_seg]
        if weights is None:
            weights = [torch.ones(sem.shape[-2:], device=self.device) for sem in labels]
        else:
            weights = [w.to(self.device).float() for w in weights]
        labels = ImageList.from_tensors(labels, div, pad_value=self.ignore_value).tensor
        weights = ImageList.from_tensors(weights, div, pad_value=0.0).tensor
        labels = labels[:, : images.shape[-2], : images.shape[-1]]
        weights = weights[:, : images.shape[-2], : images.shape[-1]]
        if ruled_out is None:
            ruled_out = [None] * len(labels)
        else:
            if len(ruled_out) != len(labels) or ruled_out.shape[1] != self.num_classes:
                raise ValueError(
                    f"ruled_out must be [{len(labels)}, {self.num_classes}, H, W], got "
                    f"{list(ruled_out.shape)}"
                )
            ruled_out = [r.to(self.device, torch.uint8) for r in ruled_out]
            ruled_out = ImageList.from_tensors(ruled_out, div, pad_value=0).tensor.bool()
            ruled_out = ruled_out[..., : images.shape[-2], : images.shape[-1]]
        targets = [
            semantic_targets(
                sem, self.num_classes, weight=w, ignore_value=self.ignore_value, ruled_out=r
            )
            for sem, w, r in zip(labels, weights, ruled_out)
        ]
        presence = torch.zeros(len(targets), self.num_classes, dtype=torch.bool, device=self.device)
        for b, target in enumerate(targets):
            presence[b, target["labels"]] = True

        text = self.text_embeddings()
        outputs, hsqg_out, row_classes = self.encode_decode(
            images,
            text,
            presence if labeled else None,
            feature_dropout,
            return_attn=return_attn,
        )
        if not labeled:
            # a pseudo-label is incomplete: below-threshold pixels may hide any class
            if absent is None:
                absent = torch.zeros_like(presence)
            elif tuple(absent.shape) != tuple(presence.shape):
                raise ValueError(f"absent must be {list(presence.shape)}, got {list(absent.shape)}")
            else:
                absent = absent.to(device=self.device, dtype=torch.bool) & ~presence
        losses = self.criterion(
            outputs,
            targets,
            row_classes=row_classes,
            row_keep=outputs["keep"],
            text_embeds=text,
            absent=absent,
        )
        if self.hsqg is not None and self.hsqg.relevance_enabled and self.relevance_weight > 0:
            has_pixels = torch.stack([(t["weight"] > 0).any() for t in targets])
            if labeled and bool(has_pixels.any()):
                bce = self.hsqg.relevance_loss(
                    hsqg_out["relevance_logits"][has_pixels], presence[has_pixels]
                )
            else:
                bce = hsqg_out["relevance_logits"].sum() * 0.0
            losses["loss_relevance"] = self.relevance_weight * bce
        if labeled and (self.topo_weight > 0 or self.anchor_weight > 0):
            # Eq. 3-5 depend on the prompts only, not on the images: computed with the labelled
            # images, so that a step with a separate unlabelled forward counts them once.
            template = self.text_encoder.template_embeddings(
                self.class_names, self.class_descriptions
            )
            losses.update(
                prompt_losses(
                    text,
                    template,
                    topo_weight=self.topo_weight,
                    anchor_weight=self.anchor_weight,
                    anchor_head=self.anchor_head,
                    anchor_lambda=self.anchor_lambda,
                )
            )
        losses.update(
            vision_language_losses(
                self.image_encoder,
                images,
                labels,
                text,
                masked_consistency_weight=self.masked_consistency_weight,
                pixel_text_weight=self.pixel_text_weight,
                temperature=self.pixel_text_temperature,
                ignore_label=self.ignore_value,
            )
        )
        return losses, outputs

    def view_outputs(self, images: torch.Tensor) -> Dict:
        """Decoder outputs of unlabelled training views, without any loss (HVLFormer's CMCR
        views): no targets, no matching, no Eq. 6-7 encoder passes.

        Args:
            images: ``[B, 3, H, W]`` 0-255 RGB (any dtype), H and W any size (zero-padded after
                normalisation, as in training).

        Returns:
            the outputs of :meth:`losses` for these images as unlabelled (predicted
            relevance, ``return_attn=True``): ``pred_logits``, ``pred_masks``, ``keep``,
            ``aux_outputs``, ``cmsam_attn``.
        """
        normalized = (images.to(self.device).float() - self.pixel_mean) / self.pixel_std
        outputs, _, _ = self.encode_decode(
            self._pad(normalized), self.text_embeddings(), return_attn=True
        )
        return outputs

    # ---- inference (hiervl/modeling/inference.py) ---------------------------------------------
    def window_predictor(self, text: torch.Tensor, source: Optional[torch.Tensor] = None):
        """One window's prediction with this model's parts: normalised ``[B, 3, H, W]`` ->
        ``(S [B, C, H, W], relevance [B, C])`` (:func:`~hiervl.modeling.inference.
        predict_window`; ``text`` / ``source`` as there)."""
        return functools.partial(
            predict_window,
            self.encode_decode,
            self._pad,
            text=text,
            source=source,
            temperature=self.semseg_inference.new_class_temperature,
        )

    @torch.no_grad()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
        """Per input: ``{"sem_seg": [C, height, width], "relevance": [C]}`` (see ``forward``),
        ``C`` over ``inference_class_names`` (``set_inference_classes``); sliding windows and
        test-time augmentation of ``semseg_inference``."""
        predict = self.window_predictor(
            self.inference_text_embeddings(), self.inference_classes.source
        )
        return [self.semseg_inference(predict, self._normalize, x) for x in batched_inputs]

    @torch.no_grad()
    def semantic_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class distribution for pseudo-labels (the teacher's view), no TTA, over the
        training classes (whatever ``set_inference_classes`` says).

        Args:
            images: ``[B, 3, H, W]`` float, already normalised with PIXEL_MEAN / STD.

        Returns:
            ``[B, C, H, W]``, summing to 1 over classes.
        """
        predict = self.window_predictor(self.text_embeddings())
        return self.semseg_inference.probabilities(predict, images.to(self.device).float())
