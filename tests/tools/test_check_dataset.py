"""tools/check_dataset.py: every problem reported with its file, and the exit status."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hiervl.utils.testing import load_script

REPO = Path(__file__).resolve().parents[2]

check_dataset = load_script("check_dataset_tool", REPO / "tools" / "check_dataset.py")
folder_tests = load_script("folder_test_helpers", REPO / "tests" / "data" / "test_folder.py")
make_folder = folder_tests.make_folder


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HIERVL_CACHE_DIR", str(tmp_path / "cache"))


def run(capsys, root, *args):
    # make_folder's images are 16x12: a crop of that size keeps the "smaller than the training
    # crop" warning out of tests about other problems (tests of it pass their own --crop-size).
    if "--crop-size" not in args:
        args = ("--crop-size", "12", "16") + args
    code = check_dataset.main([str(root), "--no-progress", *args])
    return code, capsys.readouterr().out


def test_clean_folder_passes_with_counts(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3)
    code, out = run(capsys, root, "--val-fraction", "0.4")
    assert code == 0, out
    assert "images: 8  masks: 5  labelled (train): 3  unlabelled: 3  val: 2  classes: 3" in out
    assert "0 error(s), 0 warning(s): ready to train" in out
    assert "no split files: training draws 2 of 5 labelled images for val" in out
    assert not (root / "splits").exists()  # the checker never writes


def test_broken_images_wrong_size_and_out_of_range_ids(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=5, n_unlabeled=3)
    (root / "images" / "img_01.png").write_bytes(b"not a png")
    jpg = (root / "images" / "img_05.jpg").read_bytes()
    (root / "images" / "img_05.jpg").write_bytes(jpg[: len(jpg) // 2])  # truncated, unlabelled
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "img_03.png")
    bad = folder_tests.id_mask(4)
    bad[5, 5], bad[6, 6] = 7, 3
    Image.fromarray(bad).save(root / "masks" / "img_04.png")
    code, out = run(capsys, root)
    assert code == 1
    assert "ERROR   images/img_01.png: unreadable image" in out
    assert "ERROR   images/img_05.jpg: unreadable image" in out
    assert (
        "ERROR   masks/img_03.png: the mask is 8x8 (WxH) but its image images/img_03.png is 16x12"
    ) in out
    assert "ERROR   masks/img_04.png: ids [3, 7] outside the 3 classes of classes.txt" in out
    assert "4 error(s)" in out and "training would fail" in out


def test_colour_masks_palette_and_unknown_colour(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=1, colour=True)
    code, out = run(capsys, root, "--palette", "palette.txt")
    assert code == 0, out
    assert "4 masks are not 8-bit id PNGs: converted once" in out
    code, out = run(capsys, root)
    assert code == 1
    # the same error on all 4 masks: one line with the count and examples
    assert "ERROR   4 masks: colour mask but no palette file given" in out
    assert re.search(r"\(e.g. (masks/img_0\d.png, ){2}masks/img_0\d.png; --all lists them\)", out)
    rgb = np.array(Image.open(root / "masks" / "img_02.png"))
    rgb[0:3, 5] = (7, 8, 9)
    Image.fromarray(rgb).save(root / "masks" / "img_02.png")
    code, out = run(capsys, root, "--palette", "palette.txt")
    assert code == 1
    assert "ERROR   masks/img_02.png: colours not in the palette: (7, 8, 9) (3 px)" in out
    (root / "palette.txt").write_text("0 0 0\n1 1 1\n")
    code, out = run(capsys, root, "--palette", "palette.txt")
    assert code == 1
    assert "ERROR   palette.txt: 2 class colours for 3 classes in classes.txt" in out
    code, out = run(capsys, root, "--palette", "nope.txt")
    assert code == 1 and "nope.txt: palette file not found" in out


def test_warnings_keep_exit_zero_unless_strict(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", classes=["background", "cat", "dog", "bird"])
    Image.fromarray(folder_tests.id_mask(0)).save(root / "masks" / "lost.png")
    (root / "images" / "notes.txt").write_text("x")
    Image.open(root / "masks" / "img_04.png").save(root / "masks" / "img_04.jpg")
    (root / "masks" / "img_04.png").unlink()
    code, out = run(capsys, root)
    assert code == 0, out
    assert "WARNING classes.txt: class 3 'bird' never occurs in any mask" in out
    assert "WARNING masks/lost.png: mask without an image of the same stem; ignored" in out
    assert "WARNING images/notes.txt: not an image or mask file type; ignored" in out
    assert "WARNING masks/img_04.jpg: not a PNG: ignored, so its image counts as unlabelled" in out
    assert "masks: 5  labelled (train): 3  unlabelled: 4  val: 1" in out
    code, _ = run(capsys, root, "--strict")
    assert code == 1


def test_class_list_problems(tmp_path, capsys):
    root = make_folder(tmp_path / "ds")
    (root / "classes.txt").write_text("background\ncat\ncat\n")
    code, out = run(capsys, root)
    assert code == 1
    assert "ERROR   classes.txt:3: duplicate class name 'cat' (first on line 2)" in out
    (root / "classes.txt").write_text("\n")
    code, out = run(capsys, root)
    assert code == 1 and "ERROR   classes.txt: no class names" in out
    (root / "classes.txt").unlink()
    code, out = run(capsys, root)
    assert code == 1 and "ERROR   classes.txt: missing" in out


def test_split_file_problems_and_duplicate_stems(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=2)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "images" / "img_00.bmp")
    (root / "splits").mkdir()
    (root / "splits" / "labeled.txt").write_text(
        "images/img_00.png masks/img_00.png\nimages/img_01.png masks/img_01.png\n"
        "images/img_09.png masks/img_09.png\n"
    )
    (root / "splits" / "val.txt").write_text("images/img_01.png masks/img_01.png\n")
    code, out = run(capsys, root)
    assert code == 1
    assert "ERROR   images/img_00.png: same stem as images/img_00.bmp" in out
    assert "ERROR   images/img_01.png: listed in both labeled.txt and val.txt (leak)" in out
    assert "ERROR   images/img_09.png: listed in a split file but missing" in out
    assert "WARNING images/img_02.jpg: in no split file; not used" in out
    (root / "splits" / "val.txt").unlink()
    code, out = run(capsys, root)
    assert code == 1 and "ERROR   splits: split files ['val.txt'] missing" in out


def test_too_few_labelled_and_no_images(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=1, n_unlabeled=0)
    code, out = run(capsys, root)
    assert code == 1 and "1 labelled image(s)" in out
    assert "WARNING images/: no unlabelled images" not in out
    root2 = make_folder(tmp_path / "ds2", n_labeled=3, n_unlabeled=0)
    code, out = run(capsys, root2)
    assert code == 0 and "WARNING images/: no unlabelled images" in out
    for path in (root2 / "images").iterdir():
        path.unlink()
    code, out = run(capsys, root2)
    assert code == 1 and "ERROR   images/: no images" in out


# ---- issue 17 -------------------------------------------------------------------------------


def test_mask_in_stored_orientation_of_exif_rotated_image(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 16x12, read (and trained on) as 12x16
    pixels = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    (root / "images" / "img_01.png").unlink()
    Image.fromarray(pixels).save(root / "images" / "img_01.jpg", exif=exif.tobytes())
    code, out = run(capsys, root)
    assert code == 1
    assert (
        "ERROR   masks/img_01.png: the mask is 16x12 (WxH) but its image images/img_01.jpg" in out
    )
    assert "EXIF orientation 6" in out and "training would fail" in out
    # A half turn keeps the size: only a warning can say that the mask must follow the turn.
    exif[0x0112] = 3
    Image.fromarray(pixels).save(root / "images" / "img_01.jpg", exif=exif.tobytes())
    code, out = run(capsys, root)
    assert code == 0, out
    assert "WARNING images/img_01.jpg: EXIF orientation 3: the image is turned or flipped" in out


def test_images_smaller_than_the_training_crop(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=3, n_unlabeled=1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "tiny.png")
    code, out = run(capsys, root, "--crop-size", "10", "12")
    assert code == 0, out  # training pads such images: a warning
    assert (
        "WARNING images/tiny.png: image 8x8 is smaller than the training crop 12x10 (WxH; "
        "INPUT.CROP.SIZE, --crop-size)"
    ) in out
    assert out.count("smaller than the training crop") == 1  # the 16x12 images fit


def test_files_added_after_the_split_files(tmp_path, capsys):
    root = make_folder(tmp_path / "ds", n_labeled=4, n_unlabeled=2)
    (root / "splits").mkdir()
    (root / "splits" / "labeled.txt").write_text(
        "images/img_00.png masks/img_00.png\nimages/img_01.png masks/img_01.png\n"
    )
    (root / "splits" / "val.txt").write_text("images/img_03.png masks/img_03.png\n")
    (root / "splits" / "unlabeled.txt").write_text("images/img_04.png\nimages/img_02.jpg\n")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "images" / "img_09.png")
    code, out = run(capsys, root)
    assert code == 0, out
    refresh = f"python tools/make_splits.py --folder {root.resolve()} adds it"
    assert "WARNING images/img_05.jpg: in no split file; not used (" + refresh in out
    assert "WARNING images/img_09.png: in no split file; not used (" + refresh in out
    assert (
        "WARNING images/img_02.jpg: has a mask but is listed in unlabeled.txt: its mask is not "
        "used (" + refresh
    ) in out


def test_class_list_with_byte_order_mark(tmp_path, capsys):
    # The BOM is not part of the first name: "\ufeffcat" and "cat" are the same class name.
    root = make_folder(tmp_path / "ds")
    (root / "classes.txt").write_text("\ufeffcat\ncat\ndog\n", encoding="utf-8")
    code, out = run(capsys, root)
    assert code == 1
    assert "ERROR   classes.txt:2: duplicate class name 'cat' (first on line 1)" in out


def test_repeated_errors_summarised_with_the_fix_and_ignore_declaration(tmp_path, capsys):
    """CamVid-like masks (void = 7 here): one line with the count, examples and the fix instead
    of one identical line per mask; ``ignore: 7`` in classes.txt makes the folder valid."""
    root = make_folder(tmp_path / "ds", n_labeled=6, n_unlabeled=1)
    for i in range(6):
        ids = folder_tests.id_mask(i)
        ids[ids == 255] = 7
        Image.fromarray(ids).save(root / "masks" / f"img_{i:02d}.png")
    code, out = run(capsys, root)
    assert code == 1
    error_lines = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert error_lines == [
        "ERROR   6 masks: ids [7] outside the 3 classes of classes.txt (valid: 0..2 and 255 = "
        "ignore); if 7 means 'ignore', add the line 'ignore: 7' at the end of classes.txt, else "
        "add the missing class names (e.g. masks/img_00.png, masks/img_01.png, "
        "masks/img_02.png; --all lists them)"
    ], out
    assert "6 error(s)" in out
    code, out = run(capsys, root, "--all")
    assert sum(line.startswith("ERROR   masks/img_0") for line in out.splitlines()) == 6
    with open(root / "classes.txt", "a") as f:
        f.write("ignore: 7\n")
    code, out = run(capsys, root)
    assert code == 0, out
    assert "classes.txt: mask ids [7] are read as ignore (255)" in out
    (root / "classes.txt").write_text("background\ncat\ndog\nignore: 1\n")
    code, out = run(capsys, root)
    assert code == 1 and "ERROR   classes.txt:4: ignore id 1 is class id 1" in out
