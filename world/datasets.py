"""Training data for the world's readout heads, in the layouts `python -m readout.train` reads."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from world.scenes import Scene, moved, random_move, random_scene, rearranged, recoloured

DATA_SEED_BASE = 2 * 10**7
MOVED_POINTS = 24
STATIC_POINTS = 8


def save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)


def write_spatial(folder: str, kind: str, count: int, seed: int = 0) -> tuple[str, str]:
    """images/ and targets/ (depth or edge maps) of `count` scenes; returns both folders."""
    images, targets = os.path.join(folder, "images"), os.path.join(folder, "targets")
    os.makedirs(images, exist_ok=True)
    os.makedirs(targets, exist_ok=True)
    for i in range(count):
        scene = random_scene(DATA_SEED_BASE + seed * 10**5 + i)
        save_png(scene.image(), os.path.join(images, f"{i:05d}.png"))
        save_png(scene.depth() if kind == "depth" else scene.edges(), os.path.join(targets, f"{i:05d}.png"))
    return images, targets


def _points(mask: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    pick = rng.choice(len(xs), size=min(count, len(xs)), replace=False)
    return np.stack([xs[pick], ys[pick]], 1).astype(np.float64)


def drag_pair(scene: Scene, rng: np.random.Generator) -> tuple[Scene, np.ndarray, np.ndarray]:
    """The scene with one object moved 24-40 px, and matched points (pixel indices, as the trainer reads them): on
    the moved object and on what stayed."""
    index, dx, dy = random_move(scene, rng)
    after = moved(scene, index, dx, dy)
    before_masks, after_masks = scene.visible_masks(), after.visible_masks()
    back = np.roll(np.roll(after_masks[index], -int(round(dy)), 0), -int(round(dx)), 1)
    on_object = _points(before_masks[index] & back, rng, MOVED_POINTS)
    static = ~(scene.shapes[index].mask() | after.shapes[index].mask())
    still = _points(static, rng, STATIC_POINTS)
    points_a = np.concatenate([on_object, still])
    points_b = np.concatenate([on_object + (dx, dy), still])
    return after, points_a, points_b


def write_pairs(folder: str, count: int, seed: int = 0) -> str:
    """Scene pairs whose object moved, with exact point matches; returns the manifest path."""
    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    entries = []
    for i in range(count):
        scene = random_scene(DATA_SEED_BASE + 10**6 + seed * 10**5 + i)
        after, points_a, points_b = drag_pair(scene, rng)
        names = [f"frames/{i:05d}_a.png", f"frames/{i:05d}_b.png"]
        save_png(scene.image(), os.path.join(folder, names[0]))
        save_png(after.image(), os.path.join(folder, names[1]))
        entries.append({"a": names[0], "b": names[1], "points_a": points_a.round(2).tolist(),
                        "points_b": points_b.round(2).tolist()})
    path = os.path.join(folder, "pairs.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    return path


def write_triplets(folder: str, count: int, seed: int = 0) -> str:
    """Anchor, positive (the same objects elsewhere), negative (the same layout in other colours); the manifest."""
    os.makedirs(os.path.join(folder, "scenes"), exist_ok=True)
    rng = np.random.default_rng(seed + 2)
    entries = []
    for i in range(count):
        anchor = random_scene(DATA_SEED_BASE + 2 * 10**6 + seed * 10**5 + i)
        entry = {}
        for role, scene in (("anchor", anchor), ("positive", rearranged(anchor, rng)), ("negative", recoloured(anchor, rng))):
            entry[role] = f"scenes/{i:05d}_{role}.png"
            save_png(scene.image(), os.path.join(folder, entry[role]))
        entries.append(entry)
    path = os.path.join(folder, "triplets.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    return path
