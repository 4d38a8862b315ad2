"""The one registration routine of every semantic-segmentation dataset, and its helpers.

Every dataset (the embedded demo, VOC, COCO, ADE20K, Cityscapes, your own folders) is a set of
split files in the field's format (UniMatch, SemiVL): one line per image,
``relative/image/path relative/mask/path``, relative to the dataset's root directory.
Unlabelled lines may hold the image only. :func:`register_semseg_split` turns one split file
into a lazy ``DatasetCatalog`` entry plus the standard ``MetadataCatalog`` fields;
:func:`read_split_file` and :func:`write_split_files` read and write the format (every split
file of the package, the demo's, the real datasets' and the folders', is written by the latter).

Masks read at load time hold train ids ``0..C-1`` and ``ignore_label`` (255): detectron2's
``SemSegEvaluator`` reads ``sem_seg_file_name`` directly, so preparation tools convert raw
labels beforehand. :func:`validate_semseg_sample` and :func:`validate_semseg_files` check
that contract (sizes, id range) for mappers and tools; :func:`load_semseg_split` compares the
sizes of every labelled pair from the files' headers when a split is loaded, so that a mask of
the wrong size stops a run before training or evaluation starts.
"""

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from hiervl.utils.atomic import atomic_write_text

from ..image_io import ImageHeader, ImageReadError, read_image, read_image_header

logger = logging.getLogger(__name__)

__all__ = [
    "datasets_root",
    "read_split_file",
    "write_split_files",
    "load_semseg_split",
    "register_semseg_split",
    "validate_semseg_sample",
    "validate_semseg_files",
    "SplitFileError",
    "check_pair_sizes",
    "size_mismatch_message",
]

# A callable mapping the mask path of a split line (relative to the root) onto the file that
# holds train ids, e.g. ADE's raw ``annotations/`` onto the converted ``annotations_detectron2/``.
MaskResolver = Callable[[str], str]


class SplitFileError(ValueError):
    """A split file is missing, malformed, or names a file that does not exist."""


def datasets_root() -> Path:
    """The directory holding the real datasets.

    ``$DETECTRON2_DATASETS`` when set, otherwise ``./datasets`` in the working directory, as
    detectron2's own builtin datasets do (run from the repository's root, that is its
    ``datasets/`` folder with the preparation scripts).
    """
    env = os.environ.get("DETECTRON2_DATASETS", "")
    if env:
        return Path(env).expanduser()
    return Path.cwd() / "datasets"


def read_split_file(
    split_file: os.PathLike, *, labeled: bool = True
) -> List[Tuple[int, str, Optional[str]]]:
    """Parse a split file without touching the files it names.

    Args:
        split_file: text file, one ``image [mask]`` line per sample; blank lines and lines
            starting with ``#`` are skipped.
        labeled: when True every line must name a mask.

    Returns:
        ``(line_number, image_rel, mask_rel or None)`` per sample, line numbers 1-based.
    """
    split_file = Path(split_file)
    if not split_file.is_file():
        raise SplitFileError(f"Split file not found: {split_file}")
    entries = []
    # utf-8-sig: a byte-order mark (Windows editors) is not part of the first path.
    with open(split_file, encoding="utf-8-sig") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) > 2:
                raise SplitFileError(
                    f"{split_file}:{line_no}: expected 'image [mask]', got {len(fields)} fields"
                )
            if labeled and len(fields) < 2:
                raise SplitFileError(
                    f"{split_file}:{line_no}: labelled split line has no mask path: {line.strip()}"
                )
            entries.append((line_no, fields[0], fields[1] if len(fields) == 2 else None))
    if not entries:
        raise SplitFileError(f"Split file is empty: {split_file}")
    return entries


def write_split_files(directory: os.PathLike, files: Mapping[str, Sequence[str]]) -> Path:
    """Write split files of the field's format: the one writer of every split file.

    Every file is replaced atomically (:func:`~hiervl.utils.atomic.atomic_write`): a reader
    sees the old list or the new one, never half of one.

    Args:
        directory: the folder the names of ``files`` are relative to (created when missing).
        files: ``{relative file name: lines}``, e.g. ``{"val.txt": [...], "8/labeled.txt":
            [...]}`` (sub-folders are created); a line is ``image [mask]`` without its newline,
            paths relative to the dataset's root.

    Returns:
        ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, lines in files.items():
        atomic_write_text(directory / name, "".join(f"{line}\n" for line in lines))
    return directory


def load_semseg_split(
    *,
    root: os.PathLike,
    split_file: os.PathLike,
    labeled: bool = True,
    resolve_mask: Optional[MaskResolver] = None,
    check_files: bool = True,
    check_sizes: bool = True,
) -> List[Dict[str, Any]]:
    """Read a split file into detectron2 dataset dicts.

    Args:
        root: directory the split file's paths are relative to.
        split_file: the split file (see :func:`read_split_file`).
        labeled: produce ``sem_seg_file_name`` (required); unlabelled dicts have none, even
            when their line names a mask.
        resolve_mask: maps a line's mask path onto the converted train-id file (both relative
            to ``root``); None keeps it.
        check_files: raise :class:`SplitFileError` naming the line when a file is missing.
        check_sizes: labelled splits: compare each mask's size with its image's (EXIF
            orientation applied) from the files' headers, and raise :class:`SplitFileError`
            naming every mismatching pair (see :func:`check_pair_sizes`).

    Returns:
        dicts with ``file_name``, ``image_id`` (the image's relative path without extension)
        and, when labelled, ``sem_seg_file_name``.
    """
    root = Path(root)
    dicts = []
    lines = []
    for line_no, image_rel, mask_rel in read_split_file(split_file, labeled=labeled):
        record: Dict[str, Any] = {
            "file_name": str(root / image_rel),
            "image_id": os.path.splitext(image_rel)[0],
        }
        files = [record["file_name"]]
        if labeled:
            if resolve_mask is not None:
                mask_rel = resolve_mask(mask_rel)
            record["sem_seg_file_name"] = str(root / mask_rel)
            files.append(record["sem_seg_file_name"])
        if check_files:
            for path in files:
                if not os.path.isfile(path):
                    raise SplitFileError(
                        f"{split_file}:{line_no}: file not found: {path} "
                        f"(paths are relative to {root})"
                    )
        dicts.append(record)
        lines.append(line_no)
    if labeled and check_sizes:
        check_pair_sizes(dicts, lines, split_file)
    logger.info("Loaded %d images from %s", len(dicts), split_file)
    return dicts


def size_mismatch_message(
    image_file: str, image: ImageHeader, mask_file: str, mask_hw: Tuple[int, int]
) -> str:
    """What is wrong with a mask whose size ``mask_hw`` ``(H, W)`` is not its image's."""
    mask_h, mask_w = mask_hw
    mask_named = f"mask {mask_file}" if mask_file else "the mask"
    image_named = f"its image {image_file}" if image_file else "its image"
    text = (
        f"{mask_named} is {mask_w}x{mask_h} (WxH) but {image_named} is "
        f"{image.width}x{image.height}; a mask must have its image's size (masks are not resized)"
    )
    if image.rotated and (mask_w, mask_h) == (image.height, image.width):
        text += (
            f". The image's EXIF orientation {image.orientation} turns its stored "
            f"{image.height}x{image.width} by 90 degrees when it is read, and the mask has the "
            f"stored orientation: rotate the mask the same way, or save the image with the "
            f"rotation applied and no EXIF orientation"
        )
    return text


def check_pair_sizes(
    dataset_dicts: Sequence[Dict[str, Any]],
    line_numbers: Optional[Sequence[int]] = None,
    split_file: os.PathLike = "",
) -> None:
    """Compare the size of every labelled pair from the files' headers (nothing is decoded).

    Args:
        dataset_dicts: dicts with ``file_name`` and ``sem_seg_file_name``.
        line_numbers: the split-file line of each dict (for the messages), or None.
        split_file: named in the messages.

    Raises:
        SplitFileError: listing every pair whose mask is not of its image's size (EXIF
            orientation applied to the image), or whose header cannot be read.
    """
    problems = []
    for index, record in enumerate(dataset_dicts):
        where = f"{split_file}:{line_numbers[index]}: " if line_numbers is not None else ""
        try:
            image = read_image_header(record["file_name"])
            mask = read_image_header(record["sem_seg_file_name"], kind="mask")
        except (ImageReadError, FileNotFoundError) as e:
            problems.append(f"{where}{e}")
            continue
        if (mask.height, mask.width) != (image.height, image.width):
            problems.append(
                where
                + size_mismatch_message(
                    record["file_name"],
                    image,
                    record["sem_seg_file_name"],
                    (mask.height, mask.width),
                )
            )
    if problems:
        listed = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise SplitFileError(
            f"{len(problems)} of {len(dataset_dicts)} labelled pairs cannot be used:\n  "
            f"{listed}{more}"
        )


def register_semseg_split(
    name: str,
    *,
    root: os.PathLike,
    split_file: os.PathLike,
    stuff_classes: Sequence[str],
    stuff_colors: Sequence[Sequence[int]],
    ignore_label: int = 255,
    labeled: bool = True,
    resolve_mask: Optional[MaskResolver] = None,
    prepare: Optional[Callable[[], None]] = None,
    **metadata: Any,
) -> None:
    """Register one split of a semantic-segmentation dataset.

    The ``DatasetCatalog`` entry is lazy: the split file is read on ``DatasetCatalog.get``.

    Args:
        name: dataset name, e.g. ``voc_sem_seg_train_92_labeled``.
        root: directory the split file's paths are relative to.
        split_file: ``image mask`` per line (unlabelled lines may hold the image only); read
            with ``os.fspath`` at load time, so a path-like object may decide late.
        stuff_classes: class names, index = train id (``C`` entries).
        stuff_colors: one RGB triple per class.
        ignore_label: mask value of ignored pixels.
        labeled: whether dicts carry ``sem_seg_file_name``.
        resolve_mask: see :func:`load_semseg_split`.
        prepare: called before the split file is read (e.g. generate the demo data, or raise
            a clear error when the dataset root is missing).
        metadata: extra ``MetadataCatalog`` fields (e.g. ``class_descriptions``).
    """
    if len(stuff_colors) != len(stuff_classes):
        raise ValueError(f"{name}: {len(stuff_classes)} classes but {len(stuff_colors)} colours")
    root = Path(root)

    def _load() -> List[Dict[str, Any]]:
        if prepare is not None:
            prepare()
        return load_semseg_split(
            root=root, split_file=split_file, labeled=labeled, resolve_mask=resolve_mask
        )

    DatasetCatalog.register(name, _load)
    MetadataCatalog.get(name).set(
        stuff_classes=list(stuff_classes),
        stuff_colors=[tuple(int(v) for v in c) for c in stuff_colors],
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        image_root=str(root),
        split_file=str(split_file),
        labeled=labeled,
        **metadata,
    )


def validate_semseg_sample(
    image_hw: Tuple[int, int],
    sem_seg: np.ndarray,
    *,
    num_classes: int,
    ignore_label: int = 255,
    file_name: str = "",
    image_file: str = "",
) -> None:
    """Check one labelled sample against the mask contract; raise ``ValueError`` if broken.

    Args:
        image_hw: ``(H, W)`` of the image.
        sem_seg: integer mask ``[H, W]``, before any cast (a 16-bit mask keeps its values).
        num_classes: ``C``; valid ids are ``0..C-1`` and ``ignore_label``.
        ignore_label: the ignore value.
        file_name: the mask's file, named in the message.
        image_file: the image's file, named in the size message.
    """
    where = f" ({file_name})" if file_name else ""
    if sem_seg.ndim != 2:
        raise ValueError(f"Mask must be single-channel [H, W], got shape {sem_seg.shape}{where}")
    if tuple(sem_seg.shape) != tuple(image_hw):
        # Only on this error path: the image's EXIF orientation, for the message.
        orientation = read_image_header(image_file).orientation if image_file else 1
        image = ImageHeader(*image_hw, orientation)
        raise ValueError(size_mismatch_message(image_file, image, file_name, sem_seg.shape))
    if sem_seg.dtype == np.uint8:  # the common case: a histogram is cheaper than np.unique
        values = np.flatnonzero(np.bincount(sem_seg.ravel(), minlength=256))
    else:
        values = np.unique(sem_seg)
    bad = values[(values != ignore_label) & ((values < 0) | (values >= num_classes))]
    if bad.size:
        named = ", ".join(n for n in (file_name, image_file and f"image {image_file}") if n)
        raise ValueError(
            f"Mask holds label ids {bad.tolist()} outside 0..{num_classes - 1} and ignore "
            f"{ignore_label}" + (f" ({named})" if named else "") + ": every id must be a class "
            f"of the dataset's class list ({num_classes} classes, MODEL.SEM_SEG_HEAD.NUM_CLASSES) or "
            f"{ignore_label} for ignored pixels; the built-in datasets' raw labels are converted "
            f"by their preparation tool"
        )


def validate_semseg_files(
    dataset_dicts: Sequence[Dict[str, Any]],
    *,
    num_classes: int,
    ignore_label: int = 255,
    limit: Optional[int] = None,
) -> int:
    """Open images and masks of labelled dataset dicts and validate each pair.

    Args:
        dataset_dicts: dicts with ``file_name`` and ``sem_seg_file_name``.
        num_classes: ``C``.
        ignore_label: the ignore value.
        limit: check only the first ``limit`` dicts (None = all).

    Returns:
        the number of pairs checked.
    """
    checked = 0
    for record in dataset_dicts[:limit] if limit is not None else dataset_dicts:
        image = read_image_header(record["file_name"])
        mask = read_image(record["sem_seg_file_name"], kind="mask")
        validate_semseg_sample(
            (image.height, image.width),
            mask,
            num_classes=num_classes,
            ignore_label=ignore_label,
            file_name=record["sem_seg_file_name"],
            image_file=record["file_name"],
        )
        checked += 1
    return checked
