"""Recurrence (Universal Guidance's self-recurrence) for few-step sampling: a guided model evaluation runs again from
its own guided step, re-noised back to the same sigma, so a 4-step run gets the feedback of more guided evaluations.

From x at sigma the guided prediction d' gives the deterministic step to the next sigma s'; re-noising that latent
back to sigma keeps the part of its noise the forward process keeps and draws the rest fresh. With x = a(sigma) d +
b(sigma) e (ComfyUI's noise_scaling, for every model sampling): e' = r e + sqrt(1 - r^2) xi, r = b(s') a(sigma) /
(a(s') b(sigma)); x' = a(sigma) d' + b(sigma) e'. EPS models get r = s'/sigma, flow models r = s'(1-sigma)/((1-s')sigma).
"""
from __future__ import annotations

import torch

AUTO = 0
"""The recurrence option's automatic setting: the family's few-step passes (Backbone.few_step_passes) per guided step
in runs of at most AUTO_MAX_STEPS steps without relative targets, one pass otherwise."""
AUTO_MAX_STEPS = 8
"""On the learned SD1.5 world at CFG 1 a second pass doubled the depth IoU gain at 4 steps and raised it by half at 8,
and on the world's Flux raised it by a third to a half at 4 and 8 steps (shift 1 and 3); a third pass at 4 steps
added little; on the learned Z-Image it lowered the gain (docs/families.md, Few steps). A drag moved no further with
a second pass (its fresh noise parts the edit from the reference branch it is compared with), so relative targets
keep one."""


def passes_per_step(option: int, sample_sigmas: torch.Tensor | None, relative: bool, few_step_passes: int) -> int:
    """The guided passes each guided step of this run takes (`option`: the recurrence input, AUTO or a count;
    `relative`: the run has a reference branch; `few_step_passes`: auto's count for the family in short runs)."""
    if option != AUTO:
        return option
    steps = AUTO_MAX_STEPS + 1 if sample_sigmas is None else sample_sigmas.numel() - 1
    return few_step_passes if steps <= AUTO_MAX_STEPS and not relative else 1


def next_sigma(sample_sigmas: torch.Tensor | None, sigma: float) -> float:
    """The sigma the sampler steps to from `sigma` (0 after the last step or without the schedule)."""
    if sample_sigmas is None:
        return 0.0
    sigmas = [float(s) for s in sample_sigmas.flatten()]
    below = [s for s in sigmas if s < sigma * (1 - 1e-6)]
    return max(below) if below else 0.0


def renoised(model_sampling, x: torch.Tensor, denoised: torch.Tensor, sigma: float, sigma_next: float,
             fresh: torch.Tensor) -> torch.Tensor | None:
    """The latent at `sigma` one guided step (x -> denoised) and a forward re-noising from `sigma_next` give; None
    where the latent at `sigma` holds no signal (a flow model's sigma 1), so a pass there would draw a new seed."""
    def coefficients(s: float) -> tuple[float, float]:
        at = torch.tensor([s], dtype=torch.float32)
        one = torch.ones(1, 1, 1, 1)
        signal = float(model_sampling.noise_scaling(at, torch.zeros_like(one), one.clone()).flatten()[0])
        noise = float(model_sampling.noise_scaling(at, one.clone(), torch.zeros_like(one)).flatten()[0])
        return signal, noise

    a, b = coefficients(sigma)
    a_next, b_next = coefficients(sigma_next)
    if b <= 0 or a <= 1e-6 or a_next <= 0:
        return None
    keep = min(max(b_next * a / (a_next * b), 0.0), 1.0)
    noise = (x - a * denoised) / b
    mixed = keep * noise + (1.0 - keep * keep) ** 0.5 * fresh.to(noise)
    return (a * denoised + b * mixed).to(x.dtype)
