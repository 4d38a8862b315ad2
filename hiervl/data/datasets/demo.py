"""The embedded demo dataset: small drawn landscapes with real class names.

Generated on first use (seeded, no downloads, about a second) into a cache directory:
``$HIERVL_CACHE_DIR`` or ``~/.cache/hiervl``. Each image is a scene of sky, clouds, sun,
grass, water, sand, trees and houses; every class has its own colour range and texture, and
positions, sizes, layouts, colour jitter and noise vary, so a tiny model can learn it but not
trivially, and unlabelled images carry information.

Layout of the generated root (paths of split files are relative to it, field format)::

    images/{train,val}/00000.png     RGB
    masks/{train,val}/00000.png      single-channel train ids, 255 = ignore
    splits/hiervl_demo/<n>/labeled.txt, unlabeled.txt   for each labelled budget n
    splits/hiervl_demo/val.txt

Registered names: ``hiervl_demo_train_labeled`` / ``hiervl_demo_train_unlabeled`` (default
budget), ``hiervl_demo_train_{n}_labeled`` / ``_unlabeled`` for every budget, and
``hiervl_demo_val``.
"""

import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .semseg import register_semseg_split, write_split_files

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_CLASSES",
    "DEMO_COLORS",
    "DEMO_BUDGETS",
    "DEMO_DEFAULT_BUDGET",
    "render_scene",
    "generate_demo_dataset",
    "demo_cache_dir",
    "demo_dataset_names",
    "demo_root",
    "prepare_demo_dataset",
    "register_demo",
]

# Bump when the generator's output changes: the cache is keyed by it, so old data regenerates.
GENERATOR_VERSION = 1

DEMO_CLASSES = ["sky", "cloud", "sun", "grass", "water", "sand", "tree", "house"]
SKY, CLOUD, SUN, GRASS, WATER, SAND, TREE, HOUSE = range(len(DEMO_CLASSES))
DEMO_COLORS = [
    (135, 190, 235),
    (235, 235, 240),
    (250, 215, 60),
    (90, 170, 70),
    (40, 90, 170),
    (225, 200, 140),
    (30, 100, 40),
    (180, 60, 50),
]
DEMO_DESCRIPTIONS = [
    ["sky", "blue sky", "the clear sky above the horizon"],
    ["cloud", "white cloud", "a fluffy white cloud in the sky"],
    ["sun", "yellow sun", "the bright round sun"],
    ["grass", "green grass", "a grassy meadow"],
    ["water", "blue water", "a lake or the sea with small waves"],
    ["sand", "sand", "a sandy beach"],
    ["tree", "tree", "a tree with a brown trunk and a dark green crown"],
    ["house", "house", "a small house with a roof and windows"],
]
DEMO_SEED = 0
DEMO_IMAGE_SIZE = 128
DEMO_NUM_TRAIN = 200
DEMO_NUM_VAL = 40
DEMO_BUDGETS = (8, 16)
DEMO_DEFAULT_BUDGET = 16
IGNORE_LABEL = 255


def _jitter(rng: np.random.Generator, rgb: Sequence[int], amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


def _paint(
    image: np.ndarray,
    mask: np.ndarray,
    region: np.ndarray,
    label: int,
    texture: np.ndarray,
) -> None:
    image[region] = texture[region]
    mask[region] = label


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Blobby noise in [-1, 1], ``[size, size]``: random cells upsampled bilinearly."""
    coarse = rng.uniform(-1.0, 1.0, (cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_LINEAR)


def render_scene(
    rng: np.random.Generator, size: int = DEMO_IMAGE_SIZE
) -> Tuple[np.ndarray, np.ndarray]:
    """Draw one landscape.

    Args:
        rng: the scene's random generator (all randomness comes from it).
        size: side of the square image.

    Returns:
        ``image`` uint8 ``[size, size, 3]`` RGB and ``mask`` uint8 ``[size, size]`` holding
        train ids of ``DEMO_CLASSES`` and 255 on the one-pixel outline of houses.
    """
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    image = np.zeros((s, s, 3), np.float32)
    mask = np.zeros((s, s), np.uint8)

    horizon = int(rng.uniform(0.3, 0.6) * s)
    # Sky: vertical gradient, lighter towards the horizon.
    top, bottom = _jitter(rng, (70, 130, 215), 25), _jitter(rng, (170, 210, 240), 20)
    t = np.clip(yy / max(horizon, 1), 0, 1)[..., None]
    sky = top * (1 - t) + bottom * t
    _paint(image, mask, yy < horizon, SKY, sky)

    # Ground: grass everywhere below the horizon, textured with fine noise.
    grass = _jitter(rng, DEMO_COLORS[GRASS], 25) + 25 * _smooth_noise(rng, s, s // 4)[..., None]
    _paint(image, mask, yy >= horizon, GRASS, grass)

    waves = np.sin(yy * rng.uniform(0.8, 1.4) + 3 * _smooth_noise(rng, s, 8))[..., None]
    water = _jitter(rng, DEMO_COLORS[WATER], 20) + 22 * waves
    sand = _jitter(rng, DEMO_COLORS[SAND], 15) + rng.normal(0, 10, (s, s, 1)).astype(np.float32)
    if rng.random() < 0.5:
        # Beach: the sea at the horizon, a sand band, then grass (or sand) to the bottom.
        shore = horizon + int(rng.uniform(0.15, 0.35) * (s - horizon))
        shore_line = shore + 3 * np.sin(xx / rng.uniform(5, 12) + rng.uniform(0, 6))
        _paint(image, mask, (yy >= horizon) & (yy < shore_line), WATER, water)
        dune = shore_line + rng.uniform(0.2, 0.6) * (s - shore) + 4 * _smooth_noise(rng, s, 6)
        _paint(image, mask, (yy >= shore_line) & (yy < dune), SAND, sand)
    else:
        # Meadow with a pond ringed by sand.
        cx, cy = rng.uniform(0.2, 0.8) * s, rng.uniform(horizon + 0.3 * (s - horizon), s)
        rx, ry = rng.uniform(0.12, 0.3) * s, rng.uniform(0.05, 0.14) * s
        ell = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        wobble = 0.15 * _smooth_noise(rng, s, 10)
        ground = yy >= horizon
        _paint(image, mask, ground & (ell < 1.6 + wobble), SAND, sand)
        _paint(image, mask, ground & (ell < 1.0 + wobble), WATER, water)

    # Sun and clouds in the sky.
    if rng.random() < 0.6 and horizon > 0.25 * s:
        r = rng.uniform(0.05, 0.1) * s
        cx, cy = rng.uniform(r, s - r), rng.uniform(r, max(r + 1, horizon - r))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        sun = _jitter(rng, DEMO_COLORS[SUN], 10) + 10 * _smooth_noise(rng, s, 4)[..., None]
        _paint(image, mask, disc & (yy < horizon), SUN, sun)
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, s), rng.uniform(0.05 * s, max(0.06 * s, horizon - 0.08 * s))
        blob = np.zeros((s, s), bool)
        for _ in range(rng.integers(2, 5)):
            ex, ey = cx + rng.uniform(-0.1, 0.1) * s, cy + rng.uniform(-0.03, 0.03) * s
            rx, ry = rng.uniform(0.05, 0.11) * s, rng.uniform(0.03, 0.06) * s
            blob |= ((xx - ex) / rx) ** 2 + ((yy - ey) / ry) ** 2 < 1
        cloud = _jitter(rng, DEMO_COLORS[CLOUD], 12) - 18 * np.clip(
            (yy - cy)[..., None] / (0.06 * s), 0, 1
        )
        _paint(image, mask, blob & (yy < horizon), CLOUD, cloud)

    # Houses and trees stand on the ground, back to front (larger lower down).
    objects = [("house", rng.uniform()) for _ in range(rng.integers(0, 3))]
    objects += [("tree", rng.uniform()) for _ in range(rng.integers(0, 4))]
    objects.sort(key=lambda o: o[1])
    house_union = np.zeros((s, s), bool)
    for kind, depth in objects:
        base = horizon + 2 + depth * (s - horizon - 2)
        scale = 0.5 + depth
        cx = rng.uniform(0.05, 0.95) * s
        if kind == "tree":
            h = rng.uniform(0.12, 0.2) * s * scale
            tw = max(2.0, 0.03 * s * scale)
            trunk = (np.abs(xx - cx) < tw / 2) & (yy <= base) & (yy > base - 0.45 * h)
            rx, ry = rng.uniform(0.3, 0.45) * h, 0.4 * h
            crown = ((xx - cx) / rx) ** 2 + ((yy - (base - 0.45 * h - 0.7 * ry)) / ry) ** 2 < 1
            leaves = (
                _jitter(rng, DEMO_COLORS[TREE], 15) + 30 * _smooth_noise(rng, s, s // 6)[..., None]
            )
            bark = np.broadcast_to(_jitter(rng, (100, 65, 35), 15), (s, s, 3))
            _paint(image, mask, trunk, TREE, bark)
            _paint(image, mask, crown, TREE, leaves)
        else:
            w = rng.uniform(0.12, 0.2) * s * scale
            h = w * rng.uniform(0.6, 0.9)
            wall = (np.abs(xx - cx) < w / 2) & (yy <= base) & (yy > base - h)
            peak = base - h - rng.uniform(0.35, 0.6) * w
            roof = (
                (yy > peak)
                & (yy <= base - h)
                & (np.abs(xx - cx) < (w / 2 + 2) * (yy - peak) / max(base - h - peak, 1))
            )
            wall_rgb = _jitter(
                rng, [(220, 200, 170), (200, 90, 70), (240, 240, 225)][rng.integers(3)], 15
            )
            walls = np.broadcast_to(wall_rgb, (s, s, 3)).copy()
            # Windows: dark squares on a grid.
            pane = max(2, int(w / 6))
            windows = ((xx - cx + w / 2) % (2 * pane) > pane) & (
                (yy - base + h) % (2 * pane) > pane
            )
            walls[windows] = (60, 70, 90)
            roofs = np.broadcast_to(_jitter(rng, DEMO_COLORS[HOUSE], 20), (s, s, 3))
            _paint(image, mask, wall, HOUSE, walls)
            _paint(image, mask, roof, HOUSE, roofs)
            house_union |= wall | roof

    # Ignore outline around houses (as VOC's object boundaries).
    if house_union.any():
        grown = cv2.dilate(house_union.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        mask[grown & ~house_union] = IGNORE_LABEL

    # Global colour jitter and sensor noise.
    image = image * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12, 3)
    image += rng.normal(0, rng.uniform(2, 7), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), array):
        raise OSError(f"Could not write {path}")


def generate_demo_dataset(
    out_dir: os.PathLike,
    *,
    seed: int = DEMO_SEED,
    num_train: int = DEMO_NUM_TRAIN,
    num_val: int = DEMO_NUM_VAL,
    image_size: int = DEMO_IMAGE_SIZE,
    budgets: Sequence[int] = DEMO_BUDGETS,
) -> Path:
    """Write the demo dataset into ``out_dir`` (created; must not hold a previous copy).

    Image ``i`` of a split depends only on ``(seed, split, i)``; labelled subsets are nested
    (the 8 labelled images are among the 16) and drawn by a seeded permutation.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    if any(n > num_train for n in budgets):
        raise ValueError(f"Labelled budgets {list(budgets)} exceed {num_train} train images")
    lines = {}
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        (out_dir / "masks" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i in range(count):
            image, mask = render_scene(np.random.default_rng([seed, split_id, i]), image_size)
            image_rel, mask_rel = f"images/{split}/{i:05d}.png", f"masks/{split}/{i:05d}.png"
            _write_png(out_dir / image_rel, image)
            _write_png(out_dir / mask_rel, mask)
            lines[split].append(f"{image_rel} {mask_rel}")
    files = {"val.txt": lines["val"]}
    order = np.random.default_rng([seed, 2]).permutation(num_train)
    for n in budgets:
        chosen = set(order[:n].tolist())
        files[f"{n}/labeled.txt"] = [lines["train"][i] for i in sorted(chosen)]
        files[f"{n}/unlabeled.txt"] = [
            lines["train"][i] for i in range(num_train) if i not in chosen
        ]
    write_split_files(out_dir / "splits" / "hiervl_demo", files)
    return out_dir


def demo_cache_dir() -> Path:
    """``$HIERVL_CACHE_DIR`` when set, else ``~/.cache/hiervl``."""
    env = os.environ.get("HIERVL_CACHE_DIR", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hiervl"


def demo_root() -> Path:
    """Where the current generator version's dataset lives (it may not exist yet)."""
    key = f"v{GENERATOR_VERSION}_s{DEMO_SEED}_{DEMO_IMAGE_SIZE}px_{DEMO_NUM_TRAIN}_{DEMO_NUM_VAL}"
    return demo_cache_dir() / "hiervl_demo" / key


def prepare_demo_dataset(root: Optional[os.PathLike] = None) -> Path:
    """Generate the demo dataset unless it exists; return its root.

    Safe when several processes call it at once: each writes into its own temporary directory
    and renames it into place; the first rename wins and the others discard their copy.

    Args:
        root: where the dataset lives; None = :func:`demo_root` (the versioned cache entry).
    """
    root = Path(root) if root is not None else demo_root()
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root.parent))
    try:
        logger.info("Generating the HierVL demo dataset into %s", root)
        generate_demo_dataset(tmp)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.is_dir():
                raise
            logger.info("Another process generated %s first", root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def demo_dataset_names(
    budgets: Sequence[int] = DEMO_BUDGETS, default_budget: Optional[int] = DEMO_DEFAULT_BUDGET
) -> List[Tuple[str, str, bool]]:
    """``(name, split file relative to splits/hiervl_demo, labelled)`` of every demo split."""
    entries = []
    for n in budgets:
        for kind, labeled in (("labeled", True), ("unlabeled", False)):
            entries.append((f"hiervl_demo_train_{n}_{kind}", f"{n}/{kind}.txt", labeled))
            if n == default_budget:
                entries.append((f"hiervl_demo_train_{kind}", f"{n}/{kind}.txt", labeled))
    entries.append(("hiervl_demo_val", "val.txt", True))
    return entries


def register_demo(root: Optional[os.PathLike] = None) -> None:
    """Register the demo splits (lazy: nothing is generated until ``DatasetCatalog.get``).

    Args:
        root: dataset root; None = :func:`demo_root` at registration time.
    """
    root = Path(root) if root is not None else demo_root()
    for name, rel, labeled in demo_dataset_names():
        register_semseg_split(
            name,
            root=root,
            split_file=root / "splits" / "hiervl_demo" / rel,
            stuff_classes=DEMO_CLASSES,
            stuff_colors=DEMO_COLORS,
            ignore_label=IGNORE_LABEL,
            labeled=labeled,
            prepare=functools.partial(prepare_demo_dataset, root),
            class_descriptions=DEMO_DESCRIPTIONS,
        )
