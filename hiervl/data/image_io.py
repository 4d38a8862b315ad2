"""Reading images and masks: every failure names the file.

PIL's errors (``OSError: image file is truncated``, ``cannot identify image file <_io...>``)
name no file, and in a data-loader worker the traceback does not say which sample it was.
These readers wrap detectron2's and PIL's with :class:`ImageReadError`, whose message starts
with the path. :func:`read_image_header` gives an image's size as :func:`read_image` returns it
(EXIF orientation applied) from the file's header alone, so that all image / mask sizes of a
split can be compared before training without decoding a pixel.
"""

from dataclasses import dataclass

import numpy as np
from detectron2.data import detection_utils
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = [
    "EXIF_ORIENTATION",
    "ImageHeader",
    "ImageReadError",
    "load_semseg_mask",
    "read_image",
    "read_image_header",
]

EXIF_ORIENTATION = 0x0112  # the EXIF orientation tag
_SWAPS_SIDES = (5, 6, 7, 8)  # orientations that rotate by 90 degrees (width <-> height)
# What PIL raises on broken, truncated, unknown or oversized files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class ImageReadError(OSError):
    """An image or mask file cannot be opened or decoded; the message starts with its path."""


def _error(file_name: str, kind: str, error: BaseException) -> ImageReadError:
    return ImageReadError(f"{file_name}: cannot read {kind} ({type(error).__name__}: {error})")


def read_image(file_name: str, format=None, *, kind: str = "image") -> np.ndarray:
    """detectron2's ``read_image`` (EXIF orientation applied, ``format`` conversion), naming
    the file when it cannot be read.

    Args:
        file_name: path of the image.
        format: PIL mode or "BGR" / "RGB" (see detectron2); None keeps the file's mode.
        kind: word used in the message ("image", "mask").

    Returns:
        ``[H, W, C]`` (or ``[H, W]`` for single-channel files read with ``format=None``).

    Raises:
        FileNotFoundError: unchanged (it names the file).
        ImageReadError: the file exists but cannot be decoded.
    """
    try:
        return detection_utils.read_image(file_name, format=format)
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as e:
        raise _error(file_name, kind, e) from e


def load_semseg_mask(file_name: str, dtype=np.int64) -> np.ndarray:
    """Read a label mask (train ids, ``255`` = ignore) into a writable array.

    Works under NumPy 1 and 2: the decoded image is always copied (``np.array`` default), so the
    caller may edit the result in place (``SemSegEvaluator.process`` does).

    Args:
        file_name: path of a single-channel (``L``, ``I`` or palette ``P``) PNG.
        dtype: dtype of the returned array.

    Returns:
        ``[H, W]`` array of ``dtype``.
    """
    try:
        with PathManager.open(file_name, "rb") as f:
            image = Image.open(f)
            image.load()
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as e:
        raise _error(file_name, "ground-truth mask", e) from e
    if image.mode not in ("L", "P", "I", "I;16", "1"):
        raise ValueError(
            f"Ground-truth mask {file_name} has image mode {image.mode!r}; expected a "
            "single-channel mask of train ids (L, P or I). Convert colour masks with the "
            "dataset's preparation tool first."
        )
    return np.array(image, dtype=dtype)


@dataclass(frozen=True)
class ImageHeader:
    """Size of an image file.

    Attributes:
        height, width: as :func:`read_image` returns the image (EXIF orientation applied).
        orientation: the EXIF orientation tag (1 = none; 5-8 swap width and height).
    """

    height: int
    width: int
    orientation: int = 1

    @property
    def rotated(self) -> bool:
        """Whether the EXIF orientation swaps the stored width and height."""
        return self.orientation in _SWAPS_SIDES


def _exif_orientation(image: Image.Image) -> int:
    # PNG's getexif() decodes the whole file when the eXIf chunk is not in the header; such a
    # late chunk is missed here (the mapper's check on the decoded arrays still sees it).
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
    except _DECODE_ERRORS:  # a broken EXIF block: detectron2 then applies no rotation either
        return 1
    return value if isinstance(value, int) else 1


def read_image_header(file_name: str, *, kind: str = "image") -> ImageHeader:
    """Size and EXIF orientation of an image from its header (no pixel is decoded).

    Args:
        file_name: path of the image.
        kind: word used in the message ("image", "mask").

    Raises:
        FileNotFoundError: unchanged.
        ImageReadError: not an image PIL can identify.
    """
    try:
        with Image.open(file_name) as image:
            width, height = image.size
            orientation = _exif_orientation(image)
    except FileNotFoundError:
        raise
    except _DECODE_ERRORS as e:
        raise _error(file_name, kind, e) from e
    if orientation in _SWAPS_SIDES:
        width, height = height, width
    return ImageHeader(height, width, orientation)
