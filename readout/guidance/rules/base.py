"""The interface of a guidance rule: which targets guide a model evaluation, and the losses and gradients one guided
UNet call gives them. A rule computes and returns; the patch (patch.py) records what it returns."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import torch

from ...targets.base import Readings


def gradient_scale(x: torch.Tensor) -> float:
    """The elements of one latent: per-pixel mean losses then give gradients of order one per element instead of one
    over the pixel count (at SDXL 1024 px about 1/16384, which an fp16 backward flushes to zero and the
    normalization's eps swamps). Rule fast keeps the scaled gradient (its normalized step does not depend on the
    scale); rule official divides it back out after the backward, as a loss scaler does."""
    return float(x[0].numel())


@dataclass(frozen=True)
class GuidedCall:
    """One guided UNet call as a rule reads it: the targets and which of them act, the call's readings, the latent
    with autograd, its sigma, the batch's loss chunks, and the size of the reference half that rides at the front of
    each chunk with relative targets (None without one)."""

    targets: tuple
    active: list[int]
    readings: Readings
    x: torch.Tensor
    sigma: float
    chunks: list[slice]
    branch_split: int | None = None

    def chunk_losses(self, target, readout: torch.Tensor, loss: Callable) -> torch.Tensor:
        """(chunks, B) losses of one target, chunk by chunk, on the edited half when a reference half rides along;
        `loss(target, edited, reference)` is the rule's loss."""
        def chunk_loss(part: torch.Tensor) -> torch.Tensor:
            if not self.branch_split:
                return loss(target, part, None)
            return loss(target, part[self.branch_split:], part[:self.branch_split].detach())
        return torch.stack([chunk_loss(readout[chunk]) for chunk in self.chunks])

    def fold(self, grad: torch.Tensor) -> torch.Tensor:
        """A gradient w.r.t. the whole batch summed over the loss chunks (one latent's worth)."""
        return sum(grad[chunk] for chunk in self.chunks).detach()


@dataclass
class CallResult:
    """What a rule computed from one guided call: per active target its loss per sample (summed over the chunks),
    and either each target's own gradient (rule fast) or one joint gradient of all of them (rule official)."""

    losses: dict[int, torch.Tensor] = field(default_factory=dict)
    gradients: dict[int, torch.Tensor] = field(default_factory=dict)
    joint_gradient: torch.Tensor | None = None


class GuidanceRule(ABC):
    """What a rule decides and computes; the patch owns the sampling glue and the run's state."""

    def options_for(self, options):
        """The GuidanceOptions this rule runs with (a rule may fix some of them)."""
        return options

    def check_targets(self, targets: tuple) -> None:
        """Raise a ValueError naming the input when the rule cannot guide one of the targets."""

    @abstractmethod
    def active_targets(self, targets: tuple, windows: list[tuple[float, float]], sigma: float) -> list[int]:
        """Indices of the targets that guide the model evaluation at `sigma` (`windows`: each target's sigma range)."""

    @abstractmethod
    def backprop(self, call: GuidedCall) -> CallResult:
        """The active targets' losses and gradients w.r.t. `call.x` from this call's readings."""

    def sampler_sample_wrapper(self, patch) -> Callable | None:
        """A SAMPLER_SAMPLE wrapper the rule needs around the sampler's loop, or None."""
        return None
