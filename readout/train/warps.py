"""Random warps of an image with exact point matches, for correspondence training pairs.

A warp is a backward map: for every pixel (x, y) of the warped image, the position in the source image it shows
(pixel coordinates, pixel centres at integers). Sampling matches from that map is exact for any warp."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

WARP_MODES = ("affine", "perspective", "elastic")
ELASTIC_GRID = 4
"""The elastic displacement is drawn on a 4x4 grid of control points and interpolated smoothly."""


@dataclass(frozen=True)
class WarpedPair:
    """A source image, its warp (both (H, W, 3) in [0, 1]) and matched points (P, 2: x, y) in each."""

    image_a: torch.Tensor
    image_b: torch.Tensor
    points_a: torch.Tensor
    points_b: torch.Tensor


def _pixel_grid(height: int, width: int) -> torch.Tensor:
    """(H, W, 2) pixel coordinates (x, y) of every pixel."""
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    return torch.stack([xs, ys], -1)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _affine_matrix(strength: float, size: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random 2x2 matrix (rotation, scale, shear) and translation, larger with `strength` (0..1)."""
    angle = math.radians(_uniform(generator, -30, 30) * strength)
    scale = 1 + _uniform(generator, -0.3, 0.3) * strength
    shear = _uniform(generator, -0.2, 0.2) * strength
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                            dtype=torch.float64)
    matrix = rotation @ torch.tensor([[1.0, shear], [0.0, 1.0]], dtype=torch.float64) * scale
    shift = torch.tensor([_uniform(generator, -0.15, 0.15) * strength * size for _ in range(2)], dtype=torch.float64)
    return matrix, shift


def affine_map(height: int, width: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Backward map of a random rotation, scale, shear and shift about the image centre."""
    matrix, shift = _affine_matrix(strength, min(height, width), generator)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    return (_pixel_grid(height, width) - centre) @ matrix.T + centre + shift


def _homography(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The 3x3 homography taking four source points (4, 2) to four target points."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source.tolist(), target.tolist()):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        values += [u, v]
    solution = torch.linalg.solve(torch.tensor(rows, dtype=torch.float64), torch.tensor(values, dtype=torch.float64))
    return torch.cat([solution, torch.ones(1, dtype=torch.float64)]).reshape(3, 3)


def perspective_map(height: int, width: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Backward map of a random perspective: each corner of the warped image shows a jittered source corner."""
    corners = torch.tensor([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], dtype=torch.float64)
    reach = 0.2 * strength * min(height, width)
    jittered = corners + torch.tensor([[_uniform(generator, -reach, reach) for _ in range(2)] for _ in range(4)],
                                      dtype=torch.float64)
    matrix = _homography(corners, jittered)
    grid = _pixel_grid(height, width)
    homogeneous = torch.cat([grid, torch.ones(height, width, 1, dtype=torch.float64)], -1) @ matrix.T
    return homogeneous[..., :2] / homogeneous[..., 2:]


def elastic_map(height: int, width: int, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Backward map of a mild affine warp plus a smooth random displacement field."""
    base = affine_map(height, width, 0.3 * strength, generator)
    amplitude = 0.08 * strength * min(height, width)
    coarse = torch.randn(1, 2, ELASTIC_GRID, ELASTIC_GRID, generator=generator, dtype=torch.float64) * amplitude
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0].permute(1, 2, 0)
    return base + field


MAPS = {"affine": affine_map, "perspective": perspective_map, "elastic": elastic_map}


def random_backward_map(height: int, width: int, mode: str, strength: float,
                        generator: torch.Generator) -> torch.Tensor:
    """(H, W, 2) source position of every warped pixel, for a random warp of `mode` and `strength` (0..1)."""
    if mode not in MAPS:
        raise ValueError(f"warp: {mode!r} is not one of {', '.join(WARP_MODES)}")
    return MAPS[mode](height, width, strength, generator)


def warp_image(image: torch.Tensor, backward: torch.Tensor) -> torch.Tensor:
    """The (H, W, C) image resampled through a backward map (bilinear; outside the source: its border colour)."""
    height, width = image.shape[:2]
    scale = torch.tensor([2 / max(width - 1, 1), 2 / max(height - 1, 1)], dtype=torch.float64)
    normalized = (backward * scale - 1).to(torch.float32)[None]
    sampled = F.grid_sample(image.permute(2, 0, 1)[None].float(), normalized, mode="bilinear",
                            padding_mode="border", align_corners=True)
    return sampled[0].permute(1, 2, 0).clamp(0, 1)


def sample_matches(backward: torch.Tensor, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` warped pixels whose source lies inside the source image, and that source position: (points_a in the
    source, points_b in the warped image), each (P, 2) in pixels; fewer when the warp leaves fewer."""
    height, width = backward.shape[:2]
    inside = ((backward[..., 0] >= 0) & (backward[..., 0] <= width - 1)
              & (backward[..., 1] >= 0) & (backward[..., 1] <= height - 1))
    cells = inside.flatten().nonzero()[:, 0]
    if not len(cells):
        return torch.zeros(0, 2), torch.zeros(0, 2)
    pick = cells[torch.randperm(len(cells), generator=generator)[:count]]
    points_b = torch.stack([pick % width, pick // width], 1).to(torch.float64)
    points_a = backward.reshape(-1, 2)[pick]
    return points_a.float(), points_b.float()


def random_warped_pair(image: torch.Tensor, mode: str, strength: float, count: int,
                       generator: torch.Generator) -> WarpedPair:
    """The image, a random warp of it and `count` exact matches between them."""
    height, width = image.shape[:2]
    backward = random_backward_map(height, width, mode, strength, generator)
    points_a, points_b = sample_matches(backward, count, generator)
    return WarpedPair(image.float(), warp_image(image, backward), points_a, points_b)
