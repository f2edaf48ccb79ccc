"""A colour-blob detector for decoded world images: it knows the world's colours, nothing of the model or heads."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from world.scenes import BACKGROUND, COLOURS

MAX_COLOUR_DISTANCE = 0.38
"""A pixel farther than this (RGB, 0..1) from every world colour and the background is left unclassified."""
MIN_AREA = 60
"""Blobs smaller than this (pixels) are noise, not objects (the smallest world object covers about 170)."""
_PALETTE = np.array([BACKGROUND, *COLOURS.values()], np.float32)
_NAMES = ("background", *COLOURS)


@dataclass(frozen=True)
class Blob:
    """One detected object: its colour word, pixels, area, centroid (x, y) and mean RGB."""

    colour: str
    mask: np.ndarray
    area: int
    centroid: tuple[float, float]
    mean_rgb: tuple[float, float, float]

    @property
    def shape(self) -> str:
        """circle, square or triangle from how much of its bounding box the blob fills."""
        ys, xs = np.nonzero(self.mask)
        fill = self.area / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        return "square" if fill > 0.88 else "circle" if fill > 0.64 else "triangle"


def colour_labels(image: np.ndarray) -> np.ndarray:
    """Per pixel: index into ('background', *colours), or -1 when no world colour is near."""
    distance = np.linalg.norm(image[:, :, None, :] - _PALETTE[None, None], axis=-1)
    labels = distance.argmin(-1)
    labels[distance.min(-1) > MAX_COLOUR_DISTANCE] = -1
    return labels


def detect(image: np.ndarray) -> list[Blob]:
    """Every colour blob of at least MIN_AREA pixels in an (H, W, 3) image in [0, 1], largest first."""
    labels = colour_labels(image)
    blobs = []
    for index, name in enumerate(_NAMES[1:], start=1):
        parts, count = ndimage.label(labels == index, structure=np.ones((3, 3)))
        for part in range(1, count + 1):
            mask = parts == part
            area = int(mask.sum())
            if area < MIN_AREA:
                continue
            ys, xs = np.nonzero(mask)
            blobs.append(Blob(name, mask, area, (float(xs.mean()) + 0.5, float(ys.mean()) + 0.5),
                              tuple(float(v) for v in image[mask].mean(0))))
    return sorted(blobs, key=lambda b: -b.area)


def foreground(blobs: list[Blob], shape: tuple[int, int]) -> np.ndarray:
    """The union of the blobs' pixels."""
    out = np.zeros(shape, bool)
    for blob in blobs:
        out |= blob.mask
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = float((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def largest(blobs: list[Blob], colour: str) -> Blob | None:
    """The largest blob of a colour, if any."""
    return next((b for b in blobs if b.colour == colour), None)


def caption_objects(caption: str) -> list[tuple[str, str]]:
    """(colour, shape) of each object a world caption names."""
    return [tuple(part.split()[1:3]) for part in caption.split(" and ")]
