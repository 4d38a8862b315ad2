"""hiervl.data.image_io: read errors name the file; header sizes follow EXIF orientation."""

import numpy as np
import pytest
from detectron2.data.detection_utils import read_image as d2_read_image
from PIL import Image

from hiervl.data.image_io import ImageReadError, read_image, read_image_header


@pytest.mark.parametrize("ext", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_header_size_is_the_size_read_image_returns(tmp_path, ext, orientation):
    path = tmp_path / f"x{ext}"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(path, exif=exif.tobytes())
    header = read_image_header(str(path))
    assert (header.height, header.width) == d2_read_image(str(path)).shape[:2]
    assert header.orientation == orientation and header.rotated == (orientation in (6, 8))


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)  # noise: the cut falls in the data, not the header
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"(?i)broken\.jpg: cannot read image .*truncated"):
        read_image(str(path), format="RGB")
    assert read_image_header(str(path)).width == 40  # the header is intact
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text\.png: cannot read mask"):
        read_image_header(str(tmp_path / "text.png"), kind="mask")
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        read_image(str(tmp_path / "nothing.png"))
    assert isinstance(ImageReadError("x"), OSError)  # callers catching OSError still do
