"""Every part learns: the tiny HierVL overfits four demo scenes on the CPU."""

import time

import numpy as np
import torch
from detectron2.modeling import build_model

import hiervl.hiervl_model  # noqa: F401  (registers the META_ARCH)
from hiervl.data.datasets.demo import render_scene
from hiervl.utils.testing import tiny_config

NUM_IMAGES = 4
SIZE = 64
MAX_ITERS = 120
TARGET_ACCURACY = 0.90


def _scenes():
    data = []
    for i in range(NUM_IMAGES):
        image, mask = render_scene(np.random.default_rng([7, i]), SIZE)
        data.append(
            {
                "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
                "sem_seg": torch.from_numpy(mask.astype(np.int64)),
            }
        )
    return data


@torch.no_grad()
def _pixel_accuracy(model, data):
    model.eval()
    correct = total = 0
    for x, out in zip(data, model([{"image": x["image"]} for x in data])):
        valid = x["sem_seg"] != 255
        pred = out["sem_seg"].argmax(0)
        correct += int((pred[valid] == x["sem_seg"][valid]).sum())
        total += int(valid.sum())
    model.train()
    return correct / total


def test_tiny_model_overfits_four_scenes():
    torch.manual_seed(0)
    model = build_model(tiny_config()).train()
    data = _scenes()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    accuracy, start = 0.0, time.perf_counter()
    for it in range(1, MAX_ITERS + 1):
        losses = model(data)
        total = sum(losses.values())
        assert torch.isfinite(total), losses
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if it % 20 == 0:
            accuracy = _pixel_accuracy(model, data)
            if accuracy >= TARGET_ACCURACY:
                break
    elapsed = time.perf_counter() - start
    print(f"overfit: pixel accuracy {accuracy:.3f} after {it} iterations, {elapsed:.1f} s")
    assert accuracy >= TARGET_ACCURACY, f"pixel accuracy {accuracy:.3f} after {it} iterations"
