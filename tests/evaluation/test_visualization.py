"""hiervl/evaluation/visualization.py: labels stay inside the picture, captions of panels."""

import numpy as np
import pytest
from detectron2.data import Metadata
from matplotlib.transforms import Bbox

from hiervl.evaluation.visualization import draw_semseg, side_by_side
from hiervl.utils.testing import recorded_texts


def _extent(artist) -> Bbox:
    """Display extent (pixels, origin bottom left) of a drawn text with its background box."""
    renderer = artist.figure.canvas.get_renderer()
    artist.update_bbox_position_size(renderer)
    return Bbox.union(
        [artist.get_window_extent(renderer), artist.get_bbox_patch().get_window_extent(renderer)]
    )


def _metadata(names):
    colours = [(30, 60, 200), (200, 40, 40), (40, 200, 40), (200, 200, 40)]
    metadata = Metadata()
    metadata.set(stuff_classes=list(names), stuff_colors=colours[: len(names)])
    return metadata


def _assert_inside(artist, height, width):
    box = _extent(artist)
    assert box.x0 >= 0 and box.x1 <= width, (artist.get_text(), box)
    assert box.y0 >= 0 and box.y1 <= height, (artist.get_text(), box)


@pytest.mark.parametrize("name", ["pedestrian", "person;individual;someone;somebody;mortal;soul"])
def test_label_of_a_segment_at_the_right_edge_lies_inside_the_picture(name):
    # detectron2 centres the label on the segment: a strip along the right edge put half of
    # "pedestrian" outside (the picture showed "pedestr"); an ADE20K name is wider than the
    # whole picture and must shrink.
    height, width = 80, 200
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    labels = np.zeros((height, width), dtype=np.int64)
    labels[:, width - 12 :] = 1
    labels[height - 6 :, :40] = 2  # a strip along the bottom edge
    with recorded_texts() as texts:
        picture = draw_semseg(image, labels, _metadata(["sky", name, "road"]))
    assert picture.shape == (height, width, 3)
    assert sorted(t.get_text() for t in texts) == sorted(["sky", name, "road"])
    for artist in texts:
        _assert_inside(artist, height, width)


def test_labels_in_the_middle_are_not_moved():
    height, width = 80, 200
    image = np.full((height, width, 3), 90, dtype=np.uint8)
    labels = np.zeros((height, width), dtype=np.int64)
    labels[:, 80:120] = 1
    with recorded_texts() as texts:
        draw_semseg(image, labels, _metadata(["sky", "car"]))
    car = next(t for t in texts if t.get_text() == "car")
    # detectron2's position: the median of the segment's pixels.
    assert car.get_position() == pytest.approx((99.5, 39.5))


def test_side_by_side_captions_each_panel():
    height, width = 64, 160
    left = np.full((height, width, 3), 200, dtype=np.uint8)
    right = np.full((height, width, 3), 120, dtype=np.uint8)
    with recorded_texts() as texts:
        picture = side_by_side([left, right], captions=["prediction", "ground truth"])
    strip = picture.shape[0] - height
    assert strip > 0 and picture.shape[1] == 2 * width
    assert [t.get_text() for t in texts] == ["prediction", "ground truth"]
    for artist in texts:
        _assert_inside(artist, strip, width)
    # The panels are below their strips, unchanged; each strip is dark with light text on it.
    assert (picture[strip:, :width] == left).all() and (picture[strip:, width:] == right).all()
    for half in (picture[:strip, :width], picture[:strip, width:]):
        assert np.median(half) < 60 and half.max() > 200
    with pytest.raises(ValueError, match="captions"):
        side_by_side([left, right], captions=["only one"])
    assert side_by_side([left, right]).shape == (height, 2 * width, 3)
