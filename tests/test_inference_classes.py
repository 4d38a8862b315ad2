"""Class names at inference (HierVL.set_inference_classes, MODEL.HIERVL.TEST.CLASS_NAMES): a
model trained on the demo's 8 classes predicts over renamed, reordered, extended, one-name and
200-name lists; the output ids and the drawn labels follow the given list."""

import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset
from detectron2.modeling import build_model
from PIL import Image

import hiervl.hiervl_model  # noqa: F401  (registers the META_ARCH)
from hiervl.data.datasets.demo import DEMO_CLASSES, DEMO_COLORS, render_scene
from hiervl.evaluation.sem_seg_evaluation import HierVLSemSegEvaluator
from hiervl.evaluation.visualization import class_list_metadata, draw_semseg
from hiervl.modeling.inference import row_class_probs
from hiervl.utils.testing import recorded_texts, tiny_config, train_tiny_model


def _scene(seed, size=64):
    image, mask = render_scene(np.random.default_rng([99, seed]), size)
    return image, mask


def _predict(model, image):
    x = {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous()}
    return model([x])[0]


@pytest.fixture(scope="module")
def trained():
    return train_tiny_model()


def test_reordered_training_names_give_the_same_maps_reordered(trained):
    # Names of training classes are mapped by name onto the trained classifier: the same
    # prediction, its ids in the order of the given list.
    image, _ = _scene(0)
    base = _predict(trained, image)
    order = [5, 2, 7, 0, 1, 6, 3, 4]
    trained.set_inference_classes([DEMO_CLASSES[i] for i in order])
    out = _predict(trained, image)
    trained.set_inference_classes(None)
    assert torch.allclose(out["sem_seg"], base["sem_seg"][order], atol=1e-5)
    assert torch.allclose(out["relevance"], base["relevance"][order], atol=1e-6)


def test_extended_list_ids_and_drawn_labels_follow_the_list(trained):
    names = ["road"] + DEMO_CLASSES[::-1] + ["car"]
    image, _ = _scene(1)
    base = _predict(trained, image)["sem_seg"]
    trained.set_inference_classes(names)
    out = _predict(trained, image)
    trained.set_inference_classes(None)
    assert out["sem_seg"].shape == (10, 64, 64) and out["relevance"].shape == (10,)
    assert torch.isfinite(out["sem_seg"]).all() and (out["sem_seg"] >= 0).all()
    # Ids 1..8 are the training classes reversed: where the prediction picks one of them, it
    # is mostly the class the 8-class prediction picks. Not exact: the two new class rows take
    # part in CMSAM and the decoder's self-attention (the tiny trained model agreed on 99 % of
    # the pixels of this scene).
    ids = out["sem_seg"].argmax(0)
    known = (ids >= 1) & (ids <= 8)
    assert (8 - ids[known] == base.argmax(0)[known]).float().mean() > 0.9
    # The picture's labels are the given names of the predicted ids.
    metadata = class_list_metadata(names, MetadataCatalog.get("hiervl_demo_val"))
    assert metadata.stuff_classes == names
    assert metadata.stuff_colors[1] == tuple(DEMO_COLORS[-1])  # a known name keeps its colour
    with recorded_texts() as texts:
        draw_semseg(image, ids.numpy(), metadata)
    assert sorted(t.get_text() for t in texts) == sorted(names[i] for i in ids.unique())


@pytest.mark.parametrize("count", [1, 200])
def test_one_and_two_hundred_names(trained, count):
    names = ["sky"] if count == 1 else [f"thing number {i}" for i in range(count)]
    trained.set_inference_classes(names)
    out = _predict(trained, _scene(2)[0])
    trained.set_inference_classes(None)
    assert out["sem_seg"].shape == (count, 64, 64) and out["relevance"].shape == (count,)
    assert torch.isfinite(out["sem_seg"]).all() and (out["sem_seg"] >= 0).all()
    assert int(out["sem_seg"].argmax(0).max()) < count


def test_relevance_gate_applies_to_the_given_list(trained):
    # With a threshold above every relevance, HSQG keeps only the most relevant class: the
    # decoder then sees E kept class rows out of C'.E.
    names = ["sky", "road", "car", "person"]
    seen = {}
    hook = trained.decoder.register_forward_hook(
        lambda module, args, out: seen.update(keep=args[3].clone())
    )
    threshold = trained.hsqg.relevance_threshold
    trained.hsqg.relevance_threshold = 1.1
    trained.set_inference_classes(names)
    try:
        _predict(trained, _scene(3)[0])
    finally:
        hook.remove()
        trained.hsqg.relevance_threshold = threshold
        trained.set_inference_classes(None)
    levels = trained.hsqg.num_levels
    assert seen["keep"].shape == (1, len(names) * levels)
    assert int(seen["keep"].sum()) == levels


def test_row_probabilities_of_training_and_new_names():
    # Row 0 is confidently "sky", row 1 "no object"; its text-space embedding points at the
    # first new name. Training names take the classifier's column; new names share the row's
    # object probability by text similarity.
    logits = torch.tensor([[[4.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])  # C = 2 (+ no object)
    probs = logits.softmax(-1)
    embeds = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    text = torch.eye(3)  # names: "new a" (along e0), "grass" (training class 1), "new b"
    source = torch.tensor([-1, 1, -1])
    out = row_class_probs(
        {"pred_logits": logits, "pred_embeds": embeds}, text, source, temperature=0.1
    )
    assert out.shape == (1, 2, 3)
    assert torch.allclose(out[..., 1], probs[..., 1])
    share = torch.tensor([10.0, 0.0, 0.0]).softmax(-1)
    objectness = 1 - probs[..., 2]
    assert torch.allclose(out[0, :, 0], objectness[0] * share[0])
    assert torch.allclose(out[0, :, 2], objectness[0] * share[2])
    # A confident "no object" row gives little to any new name.
    assert out[0, 1, 0] < 0.05 < out[0, 0, 0]


def test_bad_lists_are_refused(trained):
    with pytest.raises(ValueError, match="repeat"):
        trained.set_inference_classes(["sky", "road", "sky"])
    with pytest.raises(ValueError, match="non-empty"):
        trained.set_inference_classes([])
    model = build_model(tiny_config(MODEL__HIERVL__LOSS__ALIGN_WEIGHT=0.0))
    model.set_inference_classes(DEMO_CLASSES[::-1])  # training names need no text projection
    with pytest.raises(ValueError, match="road"):
        model.set_inference_classes(["sky", "road"])


def _register_permuted_split(tmp_path, order, count=3):
    """Demo scenes whose class ids are permuted: class ``order[i]`` of the demo has id ``i``."""
    name = f"test_classes_{uuid.uuid4().hex[:8]}"
    lookup = np.full(256, 255, dtype=np.uint8)
    lookup[order] = np.arange(len(order))
    records = []
    for i in range(count):
        image, mask = _scene(10 + i)
        image_path, mask_path = tmp_path / f"{name}_{i}.png", tmp_path / f"{name}_{i}_m.png"
        Image.fromarray(image).save(image_path)
        Image.fromarray(lookup[mask]).save(mask_path)
        records.append(
            {"file_name": str(image_path), "sem_seg_file_name": str(mask_path), "image_id": i}
        )
    DatasetCatalog.register(name, lambda: records)
    MetadataCatalog.get(name).set(
        stuff_classes=[DEMO_CLASSES[i] for i in order],
        stuff_colors=[tuple(DEMO_COLORS[i]) for i in order],
        ignore_label=255,
        evaluator_type="sem_seg",
    )
    return name, records


def _miou(model, dataset, records):
    batches = []
    for r in records:
        image = np.asarray(Image.open(r["file_name"]).convert("RGB"))
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        batches.append([dict(r, image=tensor, height=image.shape[0], width=image.shape[1])])
    evaluator = HierVLSemSegEvaluator(dataset, distributed=False)
    return inference_on_dataset(model, batches, evaluator)["sem_seg"]["mIoU"]


def test_eval_on_a_split_with_another_class_order_through_the_config_key(tmp_path, trained):
    # --eval-only on a dataset whose class list differs: MODEL.HIERVL.TEST.CLASS_NAMES says the
    # list; names that are training classes are mapped by name, so the metric is the one of
    # the same images in the training order.
    order = [3, 0, 7, 1, 6, 2, 5, 4]
    permuted, records = _register_permuted_split(tmp_path, order)
    plain, plain_records = _register_permuted_split(tmp_path, list(range(8)))
    state = trained.state_dict()
    with pytest.raises(ValueError, match=permuted):
        build_model(tiny_config(DATASETS__TEST=(permuted,)))
    cfg = tiny_config(
        DATASETS__TEST=(permuted,),
        MODEL__HIERVL__TEST__CLASS_NAMES=[DEMO_CLASSES[i] for i in order],
    )
    model = build_model(cfg).eval()
    model.load_state_dict(state)
    assert model.inference_class_names == [DEMO_CLASSES[i] for i in order]
    assert _miou(model, permuted, records) == pytest.approx(_miou(trained, plain, plain_records))
