"""hiervl/modeling/inference.py on its own: windows, sliding-window averaging, test-time
augmentation and the classes predicted over, with toy window predictors instead of a model."""

import pytest
import torch
from detectron2.modeling import DatasetMapperTTA

from hiervl.modeling.inference import (
    InferenceClasses,
    SemSegInference,
    predict_window,
    semantic_map,
    window_corners,
)


def _pixelwise(images):
    """A window predictor whose map is a function of each pixel alone (2 'classes': the first
    two channels shifted positive) and whose relevance is the window's mean of channel 0."""
    return images[:, :2] + 10.0, images[:, 0].mean((-2, -1))[:, None].expand(-1, 2)


def test_window_corners_cover_the_image_and_end_at_its_border():
    assert window_corners(100, 130, (64, 64), (48, 48)) == [
        (0, 0),
        (0, 48),
        (0, 66),
        (36, 0),
        (36, 48),
        (36, 66),
    ]
    assert window_corners(40, 50, (64, 64), (48, 48)) == [(0, 0)]


def test_sliding_windows_reassemble_a_pixelwise_prediction():
    image = torch.randn(3, 100, 130)
    tta = SemSegInference(crop_size=(64, 64), stride=(48, 40))
    sem, relevance = tta.sliding(_pixelwise, image)
    whole, _ = _pixelwise(image[None])
    torch.testing.assert_close(sem, whole[0])
    # relevance: the largest over the windows
    windows = [image[0, y : y + 64, x : x + 64].mean() for y, x in tta.windows(100, 130)]
    torch.testing.assert_close(relevance, torch.stack(windows).max().expand(2))
    # sliding off: one call on the whole image
    tta.sliding_window = False
    sem, relevance = tta.sliding(_pixelwise, image)
    torch.testing.assert_close(relevance, image[0].mean().expand(2))


def test_flip_tta_of_a_pixelwise_prediction_is_the_prediction():
    image = torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)
    plain = SemSegInference(crop_size=(64, 64), stride=(32, 32))
    flipped = SemSegInference(
        crop_size=(64, 64),
        stride=(32, 32),
        tta=DatasetMapperTTA(min_sizes=[70], max_size=1000, flip=True),
    )
    assert [f for _, f in flipped._views(image)] == [False, True]
    x = {"image": image}
    torch.testing.assert_close(
        flipped(_pixelwise, torch.Tensor.float, x)["sem_seg"],
        plain(_pixelwise, torch.Tensor.float, x)["sem_seg"],
    )
    # other sizes: each view's map is resized to the input, then to the output size
    scaled = SemSegInference(
        crop_size=(64, 64),
        stride=(32, 32),
        tta=DatasetMapperTTA(min_sizes=[35, 70], max_size=1000, flip=False),
    )
    out = scaled(_pixelwise, torch.Tensor.float, {"image": image, "height": 140, "width": 180})
    assert out["sem_seg"].shape == (2, 140, 180) and out["relevance"].shape == (2,)


def test_probabilities_are_a_distribution_per_pixel():
    images = torch.randn(2, 3, 70, 90)
    probs = SemSegInference(crop_size=(64, 64), stride=(32, 32)).probabilities(_pixelwise, images)
    assert probs.shape == (2, 2, 70, 90)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 70, 90))


def test_predict_window_crops_the_padded_prediction_to_the_input():
    def pad(images):
        return torch.nn.functional.pad(images, (0, 64 - images.shape[-1], 0, 64 - images.shape[-2]))

    def encode_decode(images, text):
        batch = images.shape[0]
        logits = torch.zeros(batch, 1, text.shape[0] + 1)
        masks = images[:, :1, ::4, ::4]  # one row, its mask the image's first channel
        outputs = {"pred_logits": logits, "pred_masks": masks, "keep": torch.ones(batch, 1).bool()}
        return outputs, None, torch.zeros(1, dtype=torch.long)

    images = torch.randn(2, 3, 40, 50)
    sem, relevance = predict_window(encode_decode, pad, images, torch.randn(3, 8), temperature=1)
    assert sem.shape == (2, 3, 40, 50) and relevance.shape == (2, 3)
    assert (relevance == 1).all()  # no HSQG: every class relevant
    outputs, _, _ = encode_decode(pad(images), torch.randn(3, 8))
    assert torch.allclose(
        semantic_map(outputs).sum(1), outputs["pred_masks"][:, 0].sigmoid() * 0.75
    )


def test_inference_classes_map_names_onto_the_training_classes():
    training = ["sky", "grass", "road"]
    same = InferenceClasses.resolve(None, training_names=training, can_score_new_names=False)
    assert same.names == training and same.source is None and same.descriptions is None
    mixed = InferenceClasses.resolve(
        [" road", "lake", "sky"],
        training_names=training,
        training_descriptions=[["blue sky"], ["lawn"], ["street"]],
        can_score_new_names=True,
    )
    assert mixed.names == ["road", "lake", "sky"]
    assert mixed.source.tolist() == [2, -1, 0]
    assert mixed.descriptions == [["street"], [], ["blue sky"]]
    with pytest.raises(ValueError, match="lake"):
        InferenceClasses.resolve(["lake"], training_names=training, can_score_new_names=False)
    with pytest.raises(ValueError, match="repeat"):
        InferenceClasses.resolve(["sky", "sky"], training_names=training, can_score_new_names=True)
    with pytest.raises(ValueError, match="description lists"):
        InferenceClasses.resolve(
            ["sky"], [["a"], ["b"]], training_names=training, can_score_new_names=True
        )
