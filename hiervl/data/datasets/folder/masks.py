"""Masks of a folder dataset as the evaluator reads them: 8-bit id PNGs, 255 the only ignore.

Masks of any other kind (colour, palette-mode, 16-bit, or every mask when ``classes.txt``
declares ignore ids) are converted once into id PNGs under the folder's cache
(:func:`~hiervl.data.datasets.folder.scan.folder_cache_dir`).
"""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from hiervl.utils.atomic import atomic_write

from ...image_io import ImageReadError
from .classes import IGNORE_LABEL, FolderDatasetError
from .palette import Palette, unpack_color

__all__ = ["IdMaskCache", "mask_to_ids"]


def mask_to_ids(
    mask: Image.Image,
    palette: Optional[Palette],
    file_name: str,
    ignore_ids: Sequence[int] = (),
) -> np.ndarray:
    """Turn a mask image of any supported kind into class ids, with every ignore id as 255.

    Args:
        mask: the opened mask (see :func:`_decode_mask` for the supported kinds).
        palette: colours of the classes, or None.
        file_name: named in error messages.
        ignore_ids: mask values that mean "ignore" besides 255 (classes.txt's ``ignore:``).

    Returns:
        uint8 ids ``[H, W]`` (255 = ignore; values are not checked against the class count).
    """
    ids = _decode_mask(mask, palette, file_name)
    if len(ignore_ids):
        ids[np.isin(ids, list(ignore_ids))] = IGNORE_LABEL
    return ids


def _decode_mask(mask: Image.Image, palette: Optional[Palette], file_name: str) -> np.ndarray:
    """The values of a mask image of any supported kind (a new array).

    Supported: 8-bit grey (``L``), palette-mode (``P``: the index is the id, as in VOC),
    16/32-bit grey (values up to 255), 1-bit, and colour (``RGB``/``RGBA``, alpha ignored)
    mapped through ``palette``; without a palette a colour mask whose three channels are equal
    is read as grey.

    Args:
        mask: the opened mask.
        palette: colours of the classes, or None.
        file_name: named in error messages.

    Returns:
        uint8 ids ``[H, W]`` (255 = ignore; values are not checked against the class count).
    """
    mode = mask.mode
    if mode in ("L", "P"):
        return np.array(mask, dtype=np.uint8)
    if mode == "1":
        return np.array(mask, dtype=np.uint8)
    if mode == "LA":
        return np.array(mask.getchannel("L"), dtype=np.uint8)
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        values = np.array(mask, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 255):
            raise FolderDatasetError(
                f"{file_name}: mask values {int(values.min())}..{int(values.max())} do not fit "
                f"class ids 0..254 and ignore 255"
            )
        return values.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        rgb = np.array(mask.convert("RGB"), dtype=np.uint8)
        if palette is None:
            if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(
                rgb[..., 0], rgb[..., 2]
            ):
                return rgb[..., 0].copy()
            raise FolderDatasetError(
                f"{file_name}: colour mask but no palette file given (DATASETS.CUSTOM.PALETTE or "
                f"--palette); save masks as single-channel class ids or pass the palette"
            )
        packed = (
            (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        )
        colors, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
        table = palette.lookup()
        unknown = [(int(c), int(n)) for c, n in zip(colors, counts) if int(c) not in table]
        if unknown:
            unknown.sort(key=lambda cn: -cn[1])
            listed = ", ".join(f"{unpack_color(c)} ({n} px)" for c, n in unknown[:5])
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise FolderDatasetError(f"{file_name}: colours not in the palette: {listed}{more}")
        ids = np.array([table[int(c)] for c in colors], dtype=np.uint8)
        return ids[inverse.reshape(packed.shape)]
    raise FolderDatasetError(f"{file_name}: unsupported mask image mode {mode!r}")


class IdMaskCache:
    """Maps a split line's mask onto an 8-bit id PNG with 255 as the only ignore value,
    converting other kinds (and, when classes.txt declares ignore ids, every mask) into the
    cache: ``<cache>/id_masks/<palette digest or "ids">[-ignore<ids>]/<mask path>.png``,
    converted again when the source mask is newer. The ``resolve_mask`` of every split of a
    folder dataset (:func:`~hiervl.data.datasets.semseg.register_semseg_split`)."""

    def __init__(
        self, root: Path, palette: Optional[Palette], cache: Path, ignore_ids: Sequence[int] = ()
    ):
        self.root = root
        self.palette = palette
        self.ignore_ids = list(ignore_ids)
        key = palette.digest() if palette else "ids"
        if self.ignore_ids:
            key += "-ignore" + "_".join(map(str, self.ignore_ids))
        self.cache = cache / "id_masks" / key

    def __call__(self, mask_rel: str) -> str:
        source = self.root / mask_rel
        if not source.is_file():
            return mask_rel
        try:
            with Image.open(source) as mask:
                if mask.mode == "L" and mask.format == "PNG" and not self.ignore_ids:
                    return mask_rel
                target = self.cache / Path(mask_rel).with_suffix(".png")
                if target.is_file() and target.stat().st_mtime > source.stat().st_mtime:
                    return str(target)
                ids = mask_to_ids(mask, self.palette, str(source), self.ignore_ids)
        except FolderDatasetError:
            raise
        except (OSError, SyntaxError, ValueError) as e:  # PIL's messages name no file
            raise ImageReadError(f"{source}: cannot read mask ({type(e).__name__}: {e})") from e
        # atomic: DataLoader workers may convert the same mask at once
        atomic_write(target, lambda f: Image.fromarray(ids).save(f, format="PNG"))
        return str(target)
