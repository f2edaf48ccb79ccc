"""Rule `fast`: each active target's own gradient, normalized per target (rule.py), corrects `denoised` in the
post-CFG function; targets act where sigma lies in their step window."""
from __future__ import annotations

import torch

from .strategy import GuidanceRule, gradient_scale
from ..targets.base import Readings


def fast_loss(target, edited: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """A target's per-sample loss (`reference`: the reference branch's readout, None without one)."""
    return target.loss(edited, reference if target.relative else None)


class FastRule(GuidanceRule):
    """The pack's rule (see rule.py for the normalized-gradient step)."""

    def active_targets(self, patch, model_sampling, sigma: float) -> list[int]:
        run = patch.run
        if run.windows is None:
            run.windows = [(model_sampling.percent_to_sigma(t.window.end_percent),
                            model_sampling.percent_to_sigma(t.window.start_percent)) for t in patch.targets]
        return [index for index, (target, (low, high)) in enumerate(zip(patch.targets, run.windows))
                if target.weight != 0.0 and target.active and low <= sigma <= high]

    def backprop(self, patch, active: list[int], readings: Readings, x_grad: torch.Tensor, chunks: list[slice]) -> None:
        """Each active target's own gradient w.r.t. x, summed over the loss chunks (normalized per target later), taken
        of the loss scaled by `gradient_scale`."""
        scale = gradient_scale(x_grad)
        for order, index in enumerate(active):
            target = patch.targets[index]
            losses = patch.chunk_losses(target, target.read(readings), chunks, fast_loss)
            grad = torch.autograd.grad(losses.sum() * scale, x_grad, retain_graph=order < len(active) - 1)[0]
            patch.evaluation.add(index, sum(grad[chunk] for chunk in chunks).detach(), losses.detach().sum(dim=0))
