"""The interface a guidance rule implements: which targets guide a model evaluation, and what their losses do.

The patch (patch.py) owns the sampling glue (wrappers, the grad pass, the batch layout) and calls its rule; a rule
never subclasses the patch. `fast` (fast.py) turns each target's gradient into a correction of `denoised`;
`official` (official.py) moves the latent before the sampler's step as the official code does.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable

import torch

from ..targets.base import Readings


def gradient_scale(x: torch.Tensor) -> float:
    """The elements of one latent: per-pixel mean losses then give gradients of order one per element instead of one
    over the pixel count (at SDXL 1024 px about 1/16384, which an fp16 backward flushes to zero and the
    normalization's eps swamps). Rule fast keeps the scaled gradient (its normalized step does not depend on the
    scale); rule official divides it back out after the backward, as a loss scaler does."""
    return float(x[0].numel())


class GuidanceRule(ABC):
    """What a rule decides; `patch` is the ReadoutGuidancePatch calling it (targets, run state, batch layout)."""

    def options_for(self, options):
        """The GuidanceOptions this rule runs with (a rule may fix some of them)."""
        return options

    def check_targets(self, targets: tuple) -> None:
        """Raise a ValueError naming the input when the rule cannot guide one of the targets."""

    @abstractmethod
    def active_targets(self, patch, model_sampling, sigma: float) -> list[int]:
        """Indices of the targets that guide the model evaluation at `sigma`."""

    @abstractmethod
    def backprop(self, patch, active: list[int], readings: Readings, x_grad: torch.Tensor, chunks: list[slice]) -> None:
        """Read the active targets from this model call, take their losses and gradients w.r.t. `x_grad`."""

    def sampler_sample_wrapper(self, patch) -> Callable | None:
        """A SAMPLER_SAMPLE wrapper the rule needs around the sampler's loop, or None."""
        return None
