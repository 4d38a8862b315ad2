"""CLIP ViT image encoder ``E_I`` with a simple feature pyramid (METHOD.md §1)."""

import copy
import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from torch import nn
from torchvision.models.convnext import LayerNorm2d

from .factory import build_open_clip_from_config

__all__ = ["CLIPImageEncoder", "PYRAMID_STRIDES", "PYRAMID_NAMES"]

logger = logging.getLogger(__name__)

PYRAMID_NAMES = ("res2", "res3", "res4", "res5")
PYRAMID_STRIDES = (4, 8, 16, 32)
_VIT_PARTS = (
    "conv1",
    "class_embedding",
    "positional_embedding",
    "ln_pre",
    "transformer",
    "ln_post",
)


def _check_vit(visual: nn.Module) -> None:
    missing = [name for name in _VIT_PARTS if not hasattr(visual, name)]
    if missing or not hasattr(visual.transformer, "resblocks"):
        raise TypeError(
            f"CLIPImageEncoder needs an open_clip VisionTransformer; {type(visual).__name__} "
            f"lacks {missing or ['transformer.resblocks']}"
        )
    if getattr(visual, "attn_pool", None) is not None:
        raise TypeError("CLIPImageEncoder does not support attention-pooled ViTs (CoCa)")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


def _pyramid_level(width: int, patch_size: int, stride: int, out_dim: int) -> nn.Sequential:
    """Rescale a ``[B, width, H/p, W/p]`` token map to ``stride``, then 1x1 conv + norm."""
    layers: List[nn.Module] = []
    channels = width
    if stride < patch_size:
        steps = int(round(math.log2(patch_size / stride)))
        if 2**steps * stride != patch_size:
            raise ValueError(f"stride {stride} is not patch size {patch_size} / 2^k")
        for i in range(steps):
            nxt = max(channels // 2, out_dim // 2, 1)
            layers.append(nn.ConvTranspose2d(channels, nxt, kernel_size=2, stride=2))
            if i < steps - 1:
                # LayerNorm over the channels of the map (ViTDet's simple pyramid).
                layers += [LayerNorm2d(nxt), nn.GELU()]
            channels = nxt
    elif stride > patch_size:
        factor = stride // patch_size
        if factor * patch_size != stride:
            raise ValueError(f"stride {stride} is not a multiple of patch size {patch_size}")
        # ceil_mode: an odd token grid (e.g. 224 px -> 14 tokens) still gives ceil(H / stride).
        layers.append(nn.MaxPool2d(kernel_size=factor, stride=factor, ceil_mode=True))
    layers += [nn.Conv2d(channels, out_dim, kernel_size=1, bias=False), _group_norm(out_dim)]
    return nn.Sequential(*layers)


class CLIPImageEncoder(nn.Module):
    """open_clip ViT (fine-tuned) → multi-scale pixel features and the global image embedding.

    The ViT runs once per image; the outputs of ``feature_layers`` (one block per stride 4, 8,
    16, 32) pass through a simple feature pyramid (ViTDet style: transposed convs up, identity,
    max-pool down; then 1x1 conv to ``conv_dim`` + GroupNorm). Any input whose sides are
    multiples of the patch size works: the position embedding is interpolated bicubically from
    the grid it was built for.

    ``forward`` returns ``{"res2": [B,conv_dim,H/4,W/4], "res3": [.., H/8, W/8], "res4":
    [.., H/16, W/16], "res5": [.., ceil(H/32), ceil(W/32)], "global": [B, Dt]}``; "global" is
    CLIP's image embedding ``g`` (class token → ln_post → proj), NOT L2-normalised (take the
    cosine with the text embeddings).
    """

    @configurable
    def __init__(
        self,
        *,
        visual: nn.Module,
        feature_layers: Sequence[int],
        conv_dim: int,
        frozen_copy: bool = False,
    ):
        """
        Args:
            visual: open_clip ``VisionTransformer`` (``clip_model.visual``); it is fine-tuned.
            feature_layers: 4 block indices (0-based) giving the stride 4 / 8 / 16 / 32 features.
            conv_dim: channels of every pyramid output.
            frozen_copy: also keep a frozen deep copy of ``visual`` as it is now (the pretrained
                encoder of the masked-consistency loss, Eq. 6): ``frozen_visual``,
                ``requires_grad=False``, always in eval mode. Build the encoder right after
                loading the pretrained weights.
        """
        super().__init__()
        _check_vit(visual)
        num_blocks = len(visual.transformer.resblocks)
        feature_layers = [int(i) for i in feature_layers]
        if len(feature_layers) != len(PYRAMID_STRIDES):
            raise ValueError(
                f"feature_layers needs {len(PYRAMID_STRIDES)} entries: {feature_layers}"
            )
        bad = [i for i in feature_layers if not 0 <= i < num_blocks]
        if bad:
            raise ValueError(f"feature_layers {bad} out of range for a {num_blocks}-block ViT")
        self.visual = visual
        self.feature_layers = feature_layers
        self.conv_dim = conv_dim
        self.patch_size = int(visual.conv1.kernel_size[0])
        if tuple(visual.conv1.kernel_size) != (self.patch_size, self.patch_size):
            raise ValueError("CLIPImageEncoder needs square patches")
        self.width = int(visual.conv1.out_channels)
        self.embed_dim = int(visual.proj.shape[1])
        self.pyramid = nn.ModuleDict(
            {
                name: _pyramid_level(self.width, self.patch_size, stride, conv_dim)
                for name, stride in zip(PYRAMID_NAMES, PYRAMID_STRIDES)
            }
        )
        self.frozen_visual: Optional[nn.Module] = None
        if frozen_copy:
            self.frozen_visual = copy.deepcopy(visual)
            for p in self.frozen_visual.parameters():
                p.requires_grad_(False)
            self.frozen_visual.eval()
            logger.info("CLIPImageEncoder: kept a frozen copy of the visual tower (Eq. 6)")
        self._pos_cache: Dict[Tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg, clip_model: Optional[nn.Module] = None, *, frozen_copy: bool = False):
        """``clip_model``: an already built open_clip model to share with the text encoder;
        None builds one from MODEL.HIERVL.CLIP. ``frozen_copy``: see ``__init__`` (the
        META_ARCH decides it from the loss weights)."""
        clip_cfg = cfg.MODEL.HIERVL.CLIP
        if clip_model is None:
            clip_model = build_open_clip_from_config(cfg)
        return {
            "visual": clip_model.visual,
            "feature_layers": list(clip_cfg.FEATURE_LAYERS),
            "conv_dim": cfg.MODEL.HIERVL.PIXEL_DECODER.CONV_DIM,
            "frozen_copy": frozen_copy,
        }

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """ShapeSpec (channels, stride) of every pyramid feature."""
        return {
            name: ShapeSpec(channels=self.conv_dim, stride=stride)
            for name, stride in zip(PYRAMID_NAMES, PYRAMID_STRIDES)
        }

    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of this (the patch size)."""
        return self.patch_size

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_visual is not None:
            self.frozen_visual.eval()
        return self

    # ---- ViT internals -------------------------------------------------------------------
    def _pos_embed(self, visual: nn.Module, grid: Tuple[int, int]) -> torch.Tensor:
        """Position embedding ``[1 + h*w, width]`` of ``visual`` for a token grid ``(h, w)``."""
        pos = visual.positional_embedding
        built = tuple(int(g) for g in visual.grid_size)
        if grid == built:
            return pos
        # Cache only tensors without a graph; the parameter's version catches optimizer steps.
        cacheable = not (torch.is_grad_enabled() and pos.requires_grad)
        tag = "trained" if visual is self.visual else "frozen"
        key = (tag, grid, pos._version, pos.device, pos.dtype)
        if cacheable and key in self._pos_cache:
            return self._pos_cache[key]
        if cacheable:
            logger.debug("Interpolating the position embedding from %s to %s", built, grid)
        cls_pos, grid_pos = pos[:1], pos[1:]
        grid_pos = grid_pos.reshape(1, built[0], built[1], -1).permute(0, 3, 1, 2)
        grid_pos = F.interpolate(
            grid_pos.float(), size=grid, mode="bicubic", align_corners=False, antialias=True
        ).to(pos.dtype)
        out = torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])
        if cacheable:
            stale = [k for k in self._pos_cache if k[:2] == key[:2]]
            for k in stale:
                del self._pos_cache[k]
            self._pos_cache[key] = out
        return out

    def _run_vit(
        self, visual: nn.Module, images: torch.Tensor, take: Sequence[int]
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Run ``visual`` on ``images [B,3,H,W]``.

        Returns:
            the token maps ``[B, width, H/p, W/p]`` after each block in ``take`` (in order of
            ``take``), and the final sequence ``[B, 1 + HW/p^2, width]`` (class token first).
        """
        b, _, height, width = images.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(
                f"CLIPImageEncoder: input {height}x{width} is not a multiple of the patch size {p}"
            )
        grid = (height // p, width // p)
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls_tok = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
        x = torch.cat([cls_tok, x], dim=1)
        x = x + self._pos_embed(visual, grid).to(x.dtype)
        x = visual.patch_dropout(x)
        x = visual.ln_pre(x)
        wanted = {idx: pos for pos, idx in enumerate(take)}
        maps: List[Optional[torch.Tensor]] = [None] * len(take)
        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if i in wanted:
                tokens = x if batch_first else x.transpose(0, 1)
                fmap = tokens[:, 1:].transpose(1, 2).reshape(b, -1, grid[0], grid[1])
                for j, idx in enumerate(take):
                    if idx == i:
                        maps[j] = fmap
        if not batch_first:
            x = x.transpose(0, 1)
        return maps, x

    def _project_tokens(self, visual: nn.Module, x: torch.Tensor, grid: Tuple[int, int]):
        """Final sequence ``[B, 1+N, width]`` → dense text-space tokens ``[B, Dt, h, w]``."""
        tokens = visual.ln_post(x[:, 1:]) @ visual.proj
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1])

    @staticmethod
    def _global(visual: nn.Module, x: torch.Tensor) -> torch.Tensor:
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj

    # ---- public API ----------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` float, CLIP-normalised; H and W multiples of the patch size.

        Returns:
            ``{"res2".."res5": [B, conv_dim, H/s, W/s], "global": [B, Dt]}`` (see class doc).
        """
        maps, x = self._run_vit(self.visual, images, self.feature_layers)
        out = {name: self.pyramid[name](fmap) for name, fmap in zip(PYRAMID_NAMES, maps)}
        out["global"] = self._global(self.visual, x)
        return out

    def dense_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Per-token features of the fine-tuned ViT in the text space (Eq. 6–7).

        Args:
            images: ``[B, 3, H, W]`` float, CLIP-normalised; H, W multiples of the patch size.

        Returns:
            ``[B, Dt, H/p, W/p]``: last-block tokens → ln_post → CLIP's visual projection (not
            normalised).
        """
        _, x = self._run_vit(self.visual, images, ())
        return self._project_tokens(self.visual, x, self._grid(images))

    def frozen_dense_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """``dense_embeddings`` of the frozen pretrained copy, without grad: ``[B, Dt, H/p, W/p]``.

        Raises:
            RuntimeError: the encoder was built with ``frozen_copy=False``.
        """
        if self.frozen_visual is None:
            raise RuntimeError(
                "CLIPImageEncoder has no frozen copy (built with frozen_copy=False: "
                "MODEL.HIERVL.LOSS.MASKED_CONSISTENCY_WEIGHT is 0)"
            )
        with torch.no_grad():
            _, x = self._run_vit(self.frozen_visual, images, ())
            return self._project_tokens(self.frozen_visual, x, self._grid(images))

    def _grid(self, images: torch.Tensor) -> Tuple[int, int]:
        return images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
