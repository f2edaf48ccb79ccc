"""Procedural scenes of one or two filled shapes on a light background, with exact ground truth.

Other checks rely on this vocabulary and these caption forms: keep them as they are.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SIZE = 128
COLOURS = {
    "red": (0.88, 0.12, 0.12), "green": (0.12, 0.70, 0.16), "blue": (0.14, 0.22, 0.90),
    "yellow": (0.95, 0.84, 0.10), "magenta": (0.86, 0.14, 0.84), "cyan": (0.10, 0.80, 0.86),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (0.92, 0.92, 0.90)
BACKGROUND_DEPTH = 0.08
SIZE_RANGE = (20, 50)
MIN_VISIBLE = 0.6
"""A back object keeps at least this share of its area visible."""


@dataclass(frozen=True)
class Shape:
    """One object: its colour and shape words, centre (x right, y down, pixels), size in pixels and depth (1 near)."""

    colour: str
    shape: str
    cx: float
    cy: float
    size: float
    depth: float

    def mask(self, size: int = SIZE) -> np.ndarray:
        """The object's full silhouette (before occlusion)."""
        y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        half = self.size / 2
        if self.shape == "circle":
            return (x - self.cx) ** 2 + (y - self.cy) ** 2 <= half**2
        if self.shape == "square":
            return (np.abs(x - self.cx) <= half) & (np.abs(y - self.cy) <= half)
        height = self.size * np.sqrt(3) / 2
        top, bottom = self.cy - height / 2, self.cy + height / 2
        rise = (y - top) / height
        return (y >= top) & (y <= bottom) & (np.abs(x - self.cx) <= half * rise)

    @property
    def words(self) -> str:
        return f"a {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Shapes drawn back to front."""

    shapes: tuple[Shape, ...]

    @property
    def caption(self) -> str:
        return " and ".join(s.words for s in self.shapes)

    def visible_masks(self) -> list[np.ndarray]:
        """Each object's visible pixels (later shapes cover earlier ones)."""
        full = [s.mask() for s in self.shapes]
        visible = []
        for i, mask in enumerate(full):
            covered = np.zeros_like(mask)
            for later in full[i + 1:]:
                covered |= later
            visible.append(mask & ~covered)
        return visible

    def labels(self) -> np.ndarray:
        """Per pixel: 0 background, i + 1 for shape i."""
        out = np.zeros((SIZE, SIZE), np.int64)
        for i, mask in enumerate(self.visible_masks()):
            out[mask] = i + 1
        return out

    def image(self) -> np.ndarray:
        """RGB float image (H, W, 3) in [0, 1]."""
        out = np.empty((SIZE, SIZE, 3), np.float32)
        out[:] = BACKGROUND
        for shape, mask in zip(self.shapes, self.visible_masks()):
            out[mask] = COLOURS[shape.colour]
        return out

    def depth(self) -> np.ndarray:
        """Depth control image (H, W, 3) in [0, 1], near is bright (as a MiDaS map)."""
        out = np.full((SIZE, SIZE), BACKGROUND_DEPTH, np.float32)
        for shape, mask in zip(self.shapes, self.visible_masks()):
            out[mask] = shape.depth
        return np.repeat(out[..., None], 3, axis=2)

    def edges(self) -> np.ndarray:
        """Edge control image (H, W, 3): 2 px white outlines of the visible objects on black (as a Canny map)."""
        labels = self.labels()
        edge = np.zeros((SIZE, SIZE), bool)
        for axis in (0, 1):
            diff = np.diff(labels, axis=axis) != 0
            pad = [(0, 0), (0, 0)]
            pad[axis] = (1, 0)
            edge |= np.pad(diff, pad)
            pad[axis] = (0, 1)
            edge |= np.pad(diff, pad)
        return np.repeat(edge[..., None].astype(np.float32), 3, axis=2)

    def centroids(self) -> list[tuple[float, float]]:
        """(x, y) centroid of each object's visible pixels."""
        out = []
        for mask in self.visible_masks():
            ys, xs = np.nonzero(mask)
            out.append((float(xs.mean()) + 0.5, float(ys.mean()) + 0.5))
        return out


def _random_shape(rng: np.random.Generator, colour: str, depth: float) -> Shape:
    size = float(rng.uniform(*SIZE_RANGE))
    margin = size / 2 + 2
    return Shape(colour, SHAPES[rng.integers(len(SHAPES))], float(rng.uniform(margin, SIZE - margin)),
                 float(rng.uniform(margin, SIZE - margin)), size, depth)


def _placeable(scene: Scene) -> bool:
    return all(v.sum() >= MIN_VISIBLE * s.mask().sum() for s, v in zip(scene.shapes, scene.visible_masks()))


def random_scene(seed: int, num_objects: int | None = None) -> Scene:
    """A deterministic scene: one or two objects of distinct colours, the front one nearer."""
    rng = np.random.default_rng(seed)
    count = num_objects or int(rng.integers(1, 3))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    depths = np.sort(rng.uniform(0.55, 1.0, size=count))
    while True:
        scene = Scene(tuple(_random_shape(rng, str(c), float(d)) for c, d in zip(colours, depths)))
        if _placeable(scene):
            return scene


def moved(scene: Scene, index: int, dx: float, dy: float) -> Scene:
    """The scene with one object moved by (dx, dy) pixels."""
    shapes = list(scene.shapes)
    shapes[index] = replace(shapes[index], cx=shapes[index].cx + dx, cy=shapes[index].cy + dy)
    return Scene(tuple(shapes))


def random_move(scene: Scene, rng: np.random.Generator, low: float = 24, high: float = 40) -> tuple[int, float, float]:
    """An object index and a displacement of low..high pixels that keeps the object inside the canvas and visible."""
    while True:
        index = int(rng.integers(len(scene.shapes)))
        length, angle = rng.uniform(low, high), rng.uniform(0, 2 * np.pi)
        dx, dy = float(length * np.cos(angle)), float(length * np.sin(angle))
        shape = scene.shapes[index]
        margin = shape.size / 2 + 2
        if not (margin <= shape.cx + dx <= SIZE - margin and margin <= shape.cy + dy <= SIZE - margin):
            continue
        if _placeable(moved(scene, index, dx, dy)):
            return index, dx, dy


def recoloured(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same layout with every object in another colour (still distinct colours)."""
    used = {s.colour for s in scene.shapes}
    others = rng.choice([c for c in COLOURS if c not in used], size=len(scene.shapes), replace=False)
    return Scene(tuple(replace(s, colour=str(c)) for s, c in zip(scene.shapes, others)))


def rearranged(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same objects (colours, shapes, sizes) at other positions."""
    while True:
        shapes = []
        for s in scene.shapes:
            margin = s.size / 2 + 2
            shapes.append(replace(s, cx=float(rng.uniform(margin, SIZE - margin)), cy=float(rng.uniform(margin, SIZE - margin))))
        out = Scene(tuple(shapes))
        if _placeable(out):
            return out


def all_captions() -> list[str]:
    """Every caption the world can produce (one object, or two of distinct colours)."""
    ones = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    twos = [f"a {c1} {s1} and a {c2} {s2}" for c1 in COLOURS for s1 in SHAPES for c2 in COLOURS for s2 in SHAPES if c1 != c2]
    return ones + twos
