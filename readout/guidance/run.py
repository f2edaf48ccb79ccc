"""The state of one guided run: per target, the normalized-gradient step (rule fast), losses and what could not act;
the report after the run.

Rule (eps form): eps' = eps + w * n, where n is the loss gradient w.r.t. the latent normalized
elementwise like Adam without momentum: n = g / (sqrt(v_hat) + eps_adam), v an exponential average
of g^2 over this run's guided steps (bias-corrected). The first guided step is the sign of g, as in
the official code's fresh Adam. In ComfyUI's k-diffusion space this is denoised' = denoised - sigma * w * n,
which moves the latent by w * n per unit of sigma the sampler descends, for every sampler and step count.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8
OFFICIAL_WEIGHT = 0.43
"""Default w: over the first half of 100 DDIM steps it moves the SD latent as far as the official
sign steps of 2e-2 on x_t do (sum of 2e-2 * sqrt(1 + sigma^2) over the guided steps / sigma descended)."""


@dataclass
class NormalizedGradient:
    """Adam's second-moment normalization of one target's gradients across the steps of one run."""

    beta2: float = ADAM_BETA2
    eps: float = ADAM_EPS
    second_moment: torch.Tensor | None = None
    steps: int = 0

    def __call__(self, grad: torch.Tensor, finite: torch.Tensor) -> torch.Tensor:
        """n for this step; a non-finite gradient (`finite` False, a device tensor) gives 0 and leaves v as it was."""
        grad = torch.where(finite, grad.float(), torch.zeros((), device=grad.device))
        self.steps += 1
        squared = grad * grad
        if self.second_moment is None or self.second_moment.shape != grad.shape:
            self.second_moment = (1 - self.beta2) * squared
            self.steps = 1
        else:
            updated = self.beta2 * self.second_moment + (1 - self.beta2) * squared
            self.second_moment = torch.where(finite, updated, self.second_moment)
        v_hat = self.second_moment / (1 - self.beta2 ** self.steps)
        return grad / (v_hat.sqrt() + self.eps)


@dataclass
class TargetRun:
    """One target's state within a run: its normalizer and its loss at each guided evaluation."""

    normalizer: NormalizedGradient = field(default_factory=NormalizedGradient)
    losses: list[tuple[float, torch.Tensor]] = field(default_factory=list)
    finite: list[torch.Tensor] = field(default_factory=list)
    missed: int = 0
    """Guided model evaluations in the target's window whose UNet calls had no CFG half of the loss branch."""


@dataclass
class GuidanceRun:
    """Per-run state of a guided sampling: per-target normalizers and losses, and the pending correction."""

    targets: list[TargetRun]
    windows: list[tuple[float, float]]
    """Each target's step window as a sigma range (low, high)."""
    pending: torch.Tensor | None = None

    @classmethod
    def fresh(cls, windows: list[tuple[float, float]]) -> GuidanceRun:
        return cls([TargetRun() for _ in windows], list(windows))

    def add_direction(self, index: int, weight: float, grad: torch.Tensor) -> None:
        """Normalize one target's gradient and add weight * n to this evaluation's correction (eps units).

        No host sync: a gradient with NaN/Inf contributes nothing, and is reported after the run."""
        state = self.targets[index]
        finite = torch.isfinite(grad).all()
        state.finite.append(finite)
        direction = weight * state.normalizer(grad, finite)
        self.pending = direction if self.pending is None else self.pending + direction

    def report(self, targets: tuple, loss_branch: str) -> tuple[list[str], list[str]]:
        """After sampling: a line per target on what guidance did, and warnings (also logged) where it could not act:
        steps skipped for a non-finite gradient, a loss branch the sampler did not evaluate, an empty window."""
        lines, warnings = [], []
        for state, target in zip(self.targets, targets):
            label = target.label
            if target.weight == 0.0 or not target.active:
                lines.append(f"{label}: off (weight 0 or nothing to do)")
                continue
            skipped = [i for i, finite in enumerate(state.finite) if not bool(finite)]
            guided = len(state.losses) - len(skipped)
            lines.append(f"{label}: guided {guided} model evaluation(s)")
            if skipped:
                warnings.append(f"{label}: the gradient was NaN or infinite at guided evaluation(s) {skipped}: those "
                                "steps were not guided (a NaN or infinite target, head or latent; try compute_dtype "
                                "float32)")
            if state.missed:
                warnings.append(f"{label}: at {state.missed} model evaluation(s) the sampler ran no {loss_branch} CFG "
                                f"half for the loss to read (a guider without a negative prompt, such as BasicGuider): "
                                "set loss_branch to cond")
            elif not state.losses:
                warnings.append(f"{label}: no model evaluation fell in its window (start_percent "
                                f"{target.window.start_percent} to end_percent {target.window.end_percent}): widen it")
        for warning in warnings:
            logging.warning("readout guidance: %s", warning)
        return lines, warnings

    def record_loss(self, index: int, sigma: float, loss: torch.Tensor) -> None:
        self.targets[index].losses.append((sigma, loss.detach().float().sum()))

    def record_finite(self, indices, finite: torch.Tensor) -> None:
        """Whether the gradient these targets shared at a guided evaluation was finite (rule official's joint one)."""
        for index in indices:
            self.targets[index].finite.append(finite)

    def take_correction(self, sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor | None:
        """The denoised-space correction -sigma * sum_k w_k n_k for this evaluation, or None."""
        pending, self.pending = self.pending, None
        if pending is None or pending.shape != like.shape:
            return None
        return -sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like) * pending.to(like)

    def loss_history(self) -> list[list[tuple[float, float]]]:
        """Per target, (sigma, loss) at each guided evaluation, as floats (one host sync, after sampling)."""
        return [[(s, float(v)) for s, v in t.losses] for t in self.targets]
