"""A picture of losses over a run: the readout loss per guided evaluation per target, a training run's loss per step
(people would rather look than read)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

COLORS = [(230, 80, 60), (60, 140, 230), (80, 190, 90), (230, 170, 40), (170, 90, 210), (40, 190, 190)]
WIDTH, HEIGHT, MARGIN = 512, 256, 36
NO_GUIDED_STEPS = "no guided steps (weights 0, or outside the step window)"


def plot_losses(history: list[list[tuple[float, float]]], labels: list[str],
                x_label: str = "guided model evaluations ->", empty_note: str = NO_GUIDED_STEPS,
                by_x: bool = False) -> torch.Tensor:
    """Each curve's loss over its evaluations, from its own lowest value (or 0) at the bottom to its highest at the
    top (drag losses go negative); evenly spaced, or placed by each point's x when `by_x`; an IMAGE (1, H, W, 3)."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (24, 24, 28))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = MARGIN, 12, WIDTH - 12, HEIGHT - MARGIN
    draw.rectangle([left, top, right, bottom], outline=(120, 120, 130))
    draw.text((left, bottom + 6), x_label, fill=(200, 200, 200))
    draw.text((4, top), "loss", fill=(200, 200, 200))
    if not any(history):
        draw.text((left + 10, top + 10), empty_note, fill=(220, 220, 220))
    longest = max((len(h) for h in history), default=1)
    x_max = max((x for h in history for x, _ in h), default=1.0)
    for index, (points, label) in enumerate(zip(history, labels)):
        color = COLORS[index % len(COLORS)]
        if points:
            values = np.array([loss for _, loss in points], dtype=np.float64)
            low = min(values.min(), 0.0)
            span = max(values.max() - low, 1e-12)
            if by_x:
                xs = left + (right - left) * np.array([x for x, _ in points], dtype=np.float64) / max(x_max, 1e-12)
            else:
                xs = left + (right - left) * np.arange(len(values)) / max(longest - 1, 1)
            ys = bottom - (bottom - top) * (values - low) / span
            draw.line(list(zip(xs.tolist(), ys.tolist())), fill=color, width=2)
            label = f"{label}: {values[0]:.4g} -> {values[-1]:.4g}"
        draw.text((left + 8, top + 6 + 14 * index), label, fill=color)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
