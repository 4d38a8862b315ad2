"""Frozen CLIP text encoder ``E_T`` with CoOp learnable prompts (METHOD.md §1, §3.6)."""

import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .factory import build_open_clip_from_config, build_tokenizer

__all__ = ["PromptTextEncoder", "load_class_descriptions"]

logger = logging.getLogger(__name__)

Descriptions = Optional[Sequence[Sequence[str]]]


def load_class_descriptions(path: str) -> Dict[str, List[str]]:
    """Read a descriptions file: one ``class name<TAB>description`` per line.

    A class may have several lines (one per variant); blank lines and lines starting with
    ``#`` are skipped.

    Returns:
        class name → its descriptions, in file order.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a line without a tab or with an empty side.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class descriptions file not found: {path!r}")
    out: Dict[str, List[str]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, desc = line.partition("\t")
            name, desc = name.strip(), desc.strip()
            if not sep or not name or not desc:
                raise ValueError(f"{path}:{lineno}: expected 'class name<TAB>description'")
            out.setdefault(name, []).append(desc)
    return out


def _as_sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


class _FrozenTextTower(nn.Module):
    """The text parts of an open_clip model (``CLIP`` or ``CustomTextCLIP``), frozen."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        text = getattr(clip_model, "text", clip_model)
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        missing = [n for n in needed if not hasattr(text, n)]
        if missing:
            raise TypeError(
                f"PromptTextEncoder needs an open_clip text transformer; missing {missing} "
                "(Hugging Face text towers are not supported)"
            )
        if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
            raise TypeError("PromptTextEncoder does not support CoCa / padding-masked text towers")
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.transformer = text.transformer
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        self.eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
        if self.pool_type not in ("argmax", "eos"):
            raise TypeError(
                f"PromptTextEncoder needs EOT pooling, got pool_type={self.pool_type!r}"
            )
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @property
    def width(self) -> int:
        return int(self.token_embedding.embedding_dim)

    @property
    def context_length(self) -> int:
        return int(self.positional_embedding.shape[0])

    @property
    def output_dim(self) -> int:
        proj = self.text_projection
        if proj is None:
            return self.width
        return int(proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1])

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the end-of-text token of each row of ``tokens [V, L]`` → ``[V]``."""
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.eos_id).int().argmax(dim=-1)

    def forward(self, tokens: torch.Tensor, prompts: Optional[torch.Tensor]) -> torch.Tensor:
        """
        Args:
            tokens: ``[V, L]`` token ids starting with the start-of-text token.
            prompts: ``[M, W]`` prompt embeddings put right after the start-of-text token, or
                None; then ``L + M`` must not exceed the context length.

        Returns:
            ``[V, Dt]`` L2-normalised text embeddings.
        """
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype)
        eot = self.eot_index(tokens)
        if prompts is not None:
            ctx = prompts.to(cast_dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], ctx, x[:, 1:]], dim=1)
            eot = eot + prompts.shape[0]
        length = x.shape[1]
        if length > self.context_length:
            raise ValueError(f"text of {length} tokens exceeds the context {self.context_length}")
        attn_mask = self.attn_mask
        if attn_mask is not None:
            # Causal attention: tokens after the last EOT never influence the pooled ones.
            length = int(eot.max()) + 1
            x = x[:, :length]
            attn_mask = attn_mask[:length, :length]
        x = x + self.positional_embedding[:length].to(cast_dtype)
        x = self.transformer(x, attn_mask=attn_mask)
        pooled = self.ln_final(x[torch.arange(x.shape[0], device=x.device), eot])
        proj = self.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return F.normalize(pooled.float(), dim=-1)


class PromptTextEncoder(nn.Module):
    """``t̂_c = normalise(E_T([SOT, p_1..p_M, name_c, ".", EOT]))`` with shared learnable prompts.

    The open_clip text tower is frozen (``requires_grad=False`` on every parameter, kept in eval
    mode); only ``prompts`` ``[M, W]`` learn (CoOp). ``template_embeddings`` gives the fixed
    ``t⁰_c`` of the prompt regularisers. With descriptions (a file and/or per-call lists), a
    class's embedding is the re-normalised mean of the normalised embeddings of its name and
    each description (descriptions enter ``t⁰`` verbatim, ``t̂`` after the prompts).
    """

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        prompt_length: int,
        prompt_init_std: float = 0.02,
        template: str = "a photo of a {}.",
        descriptions: Optional[Dict[str, List[str]]] = None,
    ):
        """
        Args:
            clip_model: open_clip model whose text tower is taken (its image tower is not kept).
            tokenizer: open_clip tokenizer of that model (list of str, context_length → [N, L]).
            prompt_length: number ``M`` of learnable prompt tokens (0: no prompts, ``t̂ = E_T``
                of the bare name).
            prompt_init_std: std of the normal init of the prompt tokens.
            template: fixed template of ``t⁰``; ``{}`` is replaced by the class name.
            descriptions: class name → description variants (``load_class_descriptions``).
        """
        super().__init__()
        if "{}" not in template:
            raise ValueError(f"template must contain '{{}}': {template!r}")
        self.tower = _FrozenTextTower(clip_model)
        if prompt_length < 0 or prompt_length + 3 > self.tower.context_length:
            raise ValueError(
                f"prompt_length {prompt_length} does not fit the text context "
                f"{self.tower.context_length}"
            )
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.template = template
        self.descriptions = {k: list(v) for k, v in (descriptions or {}).items()}
        self.prompts = nn.Parameter(torch.randn(prompt_length, self.tower.width) * prompt_init_std)
        self._token_cache: Dict[Tuple, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._template_cache: Dict[Tuple, torch.Tensor] = {}
        self._prompted_cache: Dict[Tuple, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg, clip_model: Optional[nn.Module] = None):
        """``clip_model``: an already built open_clip model to share with the image encoder;
        None builds one from MODEL.HIERVL.CLIP."""
        clip_cfg = cfg.MODEL.HIERVL.CLIP
        if clip_model is None:
            clip_model = build_open_clip_from_config(cfg)
        descriptions = None
        if clip_cfg.DESCRIPTIONS_FILE:
            descriptions = load_class_descriptions(clip_cfg.DESCRIPTIONS_FILE)
            logger.info(
                "Read descriptions of %d classes from %s",
                len(descriptions),
                clip_cfg.DESCRIPTIONS_FILE,
            )
        return {
            "clip_model": clip_model,
            "tokenizer": build_tokenizer(clip_cfg.MODEL_NAME),
            "prompt_length": clip_cfg.PROMPT_LENGTH,
            "prompt_init_std": clip_cfg.PROMPT_INIT_STD,
            "template": clip_cfg.TEMPLATE,
            "descriptions": descriptions,
        }

    @property
    def embed_dim(self) -> int:
        """``Dt``, the joint text-image embedding size."""
        return self.tower.output_dim

    def train(self, mode: bool = True):
        super().train(mode)
        self.tower.eval()
        return self

    # ---- helpers -------------------------------------------------------------------------
    def _variants(
        self, class_names: Sequence[str], class_descriptions: Descriptions
    ) -> List[List[str]]:
        """Description variants per class: file entries, then per-call ones, deduplicated."""
        if class_descriptions is not None and len(class_descriptions) != len(class_names):
            raise ValueError(
                f"class_descriptions has {len(class_descriptions)} entries for "
                f"{len(class_names)} classes"
            )
        out = []
        for c, name in enumerate(class_names):
            extra = list(self.descriptions.get(name, []))
            if class_descriptions is not None:
                extra += [str(d) for d in class_descriptions[c]]
            out.append(list(dict.fromkeys(d.strip() for d in extra if d.strip())))
        return out

    def _tokens(self, texts: Tuple[str, ...], context: int, device) -> torch.Tensor:
        key = (texts, context)
        if key not in self._token_cache:
            self._token_cache[key] = self.tokenizer(list(texts), context_length=context)
        return self._token_cache[key].to(device)

    def prompt_texts(
        self,
        class_names: Sequence[str],
        class_descriptions: Descriptions = None,
        *,
        prompted: bool = True,
    ) -> List[List[str]]:
        """The texts the tower reads for each class (its name, then its descriptions).

        Args:
            class_names / class_descriptions: as in ``forward``.
            prompted: the texts of ``t̂`` (``"name."``, after the learnable prompts) or, when
                False, of ``t⁰`` (``template`` filled with the name).

        Returns:
            per class, its texts in order: ``C`` lists of strings.
        """
        names = [str(n) for n in class_names]
        if not names:
            raise ValueError("PromptTextEncoder needs at least one class name")
        out = []
        for name, descs in zip(names, self._variants(names, class_descriptions)):
            first = _as_sentence(name) if prompted else self.template.format(name)
            out.append([first] + [_as_sentence(d) for d in descs])
        return out

    def _encode(
        self,
        class_names: Sequence[str],
        class_descriptions: Descriptions,
        prompted: bool,
    ) -> torch.Tensor:
        names = [str(n) for n in class_names]
        texts: List[str] = []
        owner: List[int] = []
        per_class = self.prompt_texts(names, class_descriptions, prompted=prompted)
        for c, class_texts in enumerate(per_class):
            texts += class_texts
            owner += [c] * len(class_texts)
        device = self.tower.positional_embedding.device
        context = self.tower.context_length - (self.prompt_length if prompted else 0)
        tokens = self._tokens(tuple(texts), context, device)
        prompts = self.prompts if prompted and self.prompt_length > 0 else None
        emb = self.tower(tokens, prompts)
        if len(texts) == len(names):
            return emb
        index = torch.as_tensor(owner, device=emb.device)
        summed = emb.new_zeros(len(names), emb.shape[1]).index_add(0, index, emb)
        return F.normalize(summed, dim=-1)

    @staticmethod
    def _key(class_names: Sequence[str], class_descriptions: Descriptions) -> Tuple:
        descs = None if class_descriptions is None else tuple(tuple(d) for d in class_descriptions)
        return tuple(str(n) for n in class_names), descs

    # ---- public API ----------------------------------------------------------------------
    def forward(
        self, class_names: Sequence[str], class_descriptions: Descriptions = None
    ) -> torch.Tensor:
        """Learnable-prompt class embeddings ``t̂``.

        Args:
            class_names: C class names.
            class_descriptions: optional per-class lists of description strings (dataset
                metadata ``class_descriptions``), added to those of the descriptions file.

        Returns:
            ``[C, Dt]`` float32, L2-normalised; differentiable w.r.t. ``prompts`` only. Without
            grad (inference) the result is cached until the prompts change.
        """
        if torch.is_grad_enabled() and self.prompts.requires_grad:
            return self._encode(class_names, class_descriptions, prompted=True)
        key = self._key(class_names, class_descriptions) + (
            self.prompts._version,
            self.prompts.device,
        )
        if key not in self._prompted_cache:
            self._prompted_cache.clear()
            with torch.no_grad():
                self._prompted_cache[key] = self._encode(
                    class_names, class_descriptions, prompted=True
                )
        return self._prompted_cache[key]

    def template_embeddings(
        self, class_names: Sequence[str], class_descriptions: Descriptions = None
    ) -> torch.Tensor:
        """Fixed-template class embeddings ``t⁰`` (no grad; cached per class-name tuple).

        Args:
            class_names: C class names.
            class_descriptions: as in ``forward``.

        Returns:
            ``[C, Dt]`` float32, L2-normalised, ``requires_grad=False``.
        """
        key = self._key(class_names, class_descriptions) + (self.tower.positional_embedding.device,)
        if key not in self._template_cache:
            with torch.no_grad():
                self._template_cache[key] = self._encode(
                    class_names, class_descriptions, prompted=False
                )
        return self._template_cache[key]
