"""hiervl.utils.atomic: the one atomic write of checkpoints, split files and converted masks."""

import os

import pytest

from hiervl.utils.atomic import TEMPORARY_NAME, atomic_write, atomic_write_text


def test_a_failing_write_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    target = tmp_path / "labeled.txt"
    target.write_text("old\n")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["labeled.txt"]  # the temporary file is gone too


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")

    def interrupted(f):
        f.write(b"new")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["mask.png"]


def test_writes_replace_the_file_and_create_its_folder(tmp_path):
    target = tmp_path / "splits" / "8" / "labeled.txt"
    atomic_write_text(target, "a b\n")
    atomic_write_text(target, "c d\n")
    assert target.read_text() == "c d\n"
    assert os.listdir(target.parent) == ["labeled.txt"]


def test_the_temporary_name_is_the_one_output_dir_cleans_up(tmp_path):
    seen = []
    atomic_write(tmp_path / "model.pth", lambda f: seen.append(os.path.basename(f.name)))
    (name,) = seen
    match = TEMPORARY_NAME.match(name)
    assert match and int(match.group(1)) == os.getpid()
