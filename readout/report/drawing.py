"""Marks drawn on ComfyUI IMAGEs: drag arrows, centroids and goals, attention maps as heat pictures."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

SOURCE_COLOR, TARGET_COLOR, GOAL_COLOR = (255, 70, 60), (60, 230, 90), (60, 230, 90)


def _to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image[..., :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8))


def _to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255.0) for i in images])


def _dot(draw: ImageDraw.ImageDraw, x: float, y: float, radius: float, color, filled: bool = True) -> None:
    box = [x - radius, y - radius, x + radius, y + radius]
    draw.ellipse(box, fill=color if filled else None, outline=color, width=max(1, round(radius / 2)))


def draw_pairs(images: torch.Tensor, pairs, image_size: tuple[int, int]) -> torch.Tensor:
    """IMAGE (B, H, W, 3) with each pair drawn: source dot (red), arrow, target ring (green); pair points are
    pixels of an image of image_size (H, W) and are scaled to these images."""
    out = []
    for image in images:
        picture = _to_pil(image)
        sx, sy = picture.width / image_size[1], picture.height / image_size[0]
        radius = max(2.0, picture.width / 40)
        draw = ImageDraw.Draw(picture)
        for pair in pairs:
            (x0, y0), (x1, y1) = (pair.source[0] * sx, pair.source[1] * sy), (pair.target[0] * sx, pair.target[1] * sy)
            draw.line([x0, y0, x1, y1], fill=(255, 255, 255), width=max(1, round(radius / 2)))
            _dot(draw, x0, y0, radius, SOURCE_COLOR)
            _dot(draw, x1, y1, radius * 1.4, TARGET_COLOR, filled=False)
        out.append(picture)
    return _to_tensor(out)


def heat(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) maps as an IMAGE (B, H, W, 3) of size (H, W): each map from its minimum (dark blue) to its
    maximum (yellow)."""
    flat = maps.float().flatten(1)
    low_value, high_value = flat.amin(dim=1)[:, None, None, None], flat.amax(dim=1)[:, None, None, None]
    unit = (maps.float() - low_value) / (high_value - low_value).clamp_min(1e-12)
    unit = torch.nn.functional.interpolate(unit, size=size, mode="bilinear", align_corners=False).clamp(0, 1)[:, 0]
    low, high = torch.tensor([0.05, 0.05, 0.3]), torch.tensor([1.0, 0.9, 0.1])
    return low + unit[..., None].cpu() * (high - low)


def mark(images: torch.Tensor, centroids: torch.Tensor, goals: torch.Tensor | None = None) -> torch.Tensor:
    """IMAGE with each image's centroid (x, y in [0, 1]) as a white cross and its goal, if any, as a green ring."""
    out = []
    for index, image in enumerate(images):
        picture = _to_pil(image)
        draw = ImageDraw.Draw(picture)
        radius = max(3.0, picture.width / 24)
        x, y = float(centroids[index][0]) * picture.width, float(centroids[index][1]) * picture.height
        width = max(1, round(radius / 3))
        draw.line([x - radius, y, x + radius, y], fill=(255, 255, 255), width=width)
        draw.line([x, y - radius, x, y + radius], fill=(255, 255, 255), width=width)
        if goals is not None:
            gx, gy = float(goals[index][0]) * picture.width, float(goals[index][1]) * picture.height
            _dot(draw, gx, gy, radius, GOAL_COLOR, filled=False)
        out.append(picture)
    return _to_tensor(out)
