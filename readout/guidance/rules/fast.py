"""Rule `fast`: each active target's own gradient, normalized per target (run.py), corrects `denoised` in the
post-CFG function; targets act where sigma lies in their step window."""
from __future__ import annotations

import torch

from .base import CallResult, GuidanceRule, GuidedCall, gradient_scale


def fast_loss(target, edited: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """A target's per-sample loss (`reference`: the reference branch's readout, None without one)."""
    return target.loss(edited, reference if target.relative else None)


class FastRule(GuidanceRule):
    """The pack's rule (see run.py for the normalized-gradient step)."""

    def active_targets(self, targets: tuple, windows: list[tuple[float, float]], sigma: float) -> list[int]:
        return [index for index, (target, (low, high)) in enumerate(zip(targets, windows))
                if target.weight != 0.0 and target.active and low <= sigma <= high]

    def backprop(self, call: GuidedCall) -> CallResult:
        """Each active target's own gradient w.r.t. x, summed over the loss chunks (normalized per target later), taken
        of the loss scaled by `gradient_scale`."""
        scale = gradient_scale(call.x)
        result = CallResult()
        for order, index in enumerate(call.active):
            target = call.targets[index]
            losses = call.chunk_losses(target, target.read(call.readings), fast_loss)
            grad = torch.autograd.grad(losses.sum() * scale, call.x, retain_graph=order < len(call.active) - 1)[0]
            result.gradients[index] = call.fold(grad)
            result.losses[index] = losses.detach().sum(dim=0)
        return result
