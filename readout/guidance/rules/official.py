"""Rule `official`: the official code's guided step inside ComfyUI's own samplers.

At each guided step i of n (target windows: int(start * n) <= i < int(end * n), like the official rg_ratio):
1. one model evaluation at x with autograd over both CFG halves; the loss is the sum over the halves and over
   the active targets of (w_k / w_max) * the target's `official_loss`, one backward;
2. one step of a fresh AdamW (betas 0.9/0.999, eps 1e-8, no weight decay) on the VP latent
   x_t = x / sqrt(1 + sigma^2) with lr = 2e-2 * w_max / OFFICIAL_WEIGHT (the default weight gives the official
   2e-2); a fresh Adam's first step is lr * g / (|g| + eps) (8-bit AdamW under fp16 in the official code: not here);
3. the sampler's own step from the updated latent, with a fresh model evaluation.
ComfyUI's `ddim` (and `euler`) step is DDIM with eta 0, `euler_ancestral` DDIM with eta 1: those three run.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import torch

from ..run import ADAM_BETA2, ADAM_EPS, OFFICIAL_WEIGHT
from .base import CallResult, GuidanceRule, GuidedCall, gradient_scale

OFFICIAL_LR = 2e-2
ADAM_BETA1 = 0.9
OFFICIAL_SAMPLERS = ("ddim", "euler", "euler_ancestral")
"""ddim and euler: DDIM with eta 0 (the official drag setting); euler_ancestral: DDIM with eta 1 (spatial)."""


def step_window(start_percent: float, end_percent: float, steps: int) -> range:
    """The steps a target guides, as the official code turns rg_ratio into step indices."""
    return range(int(start_percent * steps), int(end_percent * steps))


def learning_rate(weights: list[float]) -> float:
    """Adam's lr for a guided step: the official 2e-2 at the default weight, proportional to the largest weight."""
    return OFFICIAL_LR * max(weights) / OFFICIAL_WEIGHT


def fresh_adam_step(param: torch.Tensor, grad: torch.Tensor, lr: float) -> torch.Tensor:
    """param after one step of a new torch AdamW (no weight decay), as the official code takes per guided step:
    about param - lr * sign(grad)."""
    with torch.inference_mode(False):
        leaf = param.detach().clone()
        leaf.grad = grad.detach().clone().to(leaf)
        torch.optim.AdamW([leaf], lr=lr, betas=(ADAM_BETA1, ADAM_BETA2), eps=ADAM_EPS, weight_decay=0.0).step()
    return leaf


def _official_step_functions() -> tuple:
    """ComfyUI's k-diffusion step functions behind ddim/euler and euler_ancestral."""
    import comfy.k_diffusion.sampling as k

    return k.sample_euler, k.sample_euler_ancestral


def check_official_sampler(sampler_name: str) -> None:
    """Refuse a sampler the official rule does not define, naming the inputs to change."""
    if sampler_name not in OFFICIAL_SAMPLERS:
        raise ValueError(f"sampler_name: rule official reproduces the official DDIM step and runs with "
                         f"{', '.join(OFFICIAL_SAMPLERS)} only, not {sampler_name!r}; pick one of those or set "
                         "rule to fast")


def _official_step_loss(width: torch.Tensor):
    def loss(target, edited: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
        return target.official_loss(edited, reference, width)
    return loss


class OfficialRule(GuidanceRule):
    """Guidance that moves the latent before the sampler's step, as the official code does (module docstring; on flow-matching
    models x is already x_t).
    Per run state: the targets of the step being guided (the gradient its model evaluation leaves is the patch's)."""

    def __init__(self) -> None:
        self.step_targets: list[int] = []
        self.vp_scale = lambda sigma: math.sqrt(1 + sigma * sigma)
        """The model family's x -> x_t scale (Backbone.vp_scale), taken from the evaluation's readings."""

    def options_for(self, options):
        """The official loss sums both CFG halves."""
        return dataclasses.replace(options, loss_branch="both")

    def check_targets(self, targets: tuple) -> None:
        unsupported = [t.label for t in targets if not t.has_official_loss]
        if unsupported:
            raise ValueError(f"rule: official has no self-guidance ({', '.join(unsupported)}); the official code "
                             "guides with readout heads only: use rule fast")

    def active_targets(self, targets: tuple, windows: list[tuple[float, float]], sigma: float) -> list[int]:
        return self.step_targets

    def backprop(self, call: GuidedCall) -> CallResult:
        """One backward of the weighted sum of the official losses over the active targets and all CFG chunks."""
        self.vp_scale = call.readings.backbone.vp_scale
        x_t = call.x.detach() / self.vp_scale(call.sigma)
        loss = _official_step_loss(x_t.max() - x_t.min())
        top = max(call.targets[index].weight for index in call.active)
        result = CallResult()
        total = call.x.new_zeros(())
        for index in call.active:
            target = call.targets[index]
            losses = call.chunk_losses(target, target.read(call.readings), loss)
            result.losses[index] = losses.detach().sum(dim=0)
            total = total + target.weight / top * losses.sum()
        scale = gradient_scale(call.x)
        result.joint_gradient = call.fold(torch.autograd.grad(total * scale, call.x)[0] / scale)
        return result

    def sampler_sample_wrapper(self, patch):
        return partial(self._sampler_sample, patch)

    def _sampler_sample(self, patch, executor, *args, **kwargs):
        """Run the sampler's step function one step at a time with the official update before each step."""
        sampler = executor.class_obj
        step_function = getattr(sampler, "sampler_function", None)
        if step_function not in _official_step_functions():
            name = getattr(step_function, "__name__", type(sampler).__name__).removeprefix("sample_")
            check_official_sampler(name)
        sampler.sampler_function = partial(self._sample, patch, step_function)
        try:
            return executor(*args, **kwargs)
        finally:
            sampler.sampler_function = step_function

    def _sample(self, patch, step_function, model, x, sigmas, extra_args=None, callback=None, disable=None,
                **options):
        import comfy.k_diffusion.sampling as k
        from tqdm.auto import trange

        extra_args = {} if extra_args is None else extra_args
        if step_function is k.sample_euler_ancestral and options.get("noise_sampler") is None:
            options["noise_sampler"] = k.default_noise_sampler(x, seed=extra_args.get("seed"))
        steps = len(sigmas) - 1
        for i in trange(steps, disable=disable):
            x = self._guide(patch, model, x, sigmas[i], i, steps, extra_args)
            shifted = None if callback is None else partial(_shifted_callback, callback, i)
            x = step_function(model, x, sigmas[i:i + 2], extra_args=extra_args, callback=shifted, disable=True,
                              **options)
        return x

    def _guide(self, patch, model, x: torch.Tensor, sigma: torch.Tensor, step: int, steps: int, extra_args: dict):
        """x after the official update at this step (x itself when no target guides it)."""
        active = [index for index, target in enumerate(patch.targets)
                  if target.weight != 0.0 and target.active
                  and step in step_window(target.window.start_percent, target.window.end_percent, steps)]
        if not active:
            return x
        self.step_targets = active
        try:
            model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)
        finally:
            self.step_targets = []
        left = patch.take_joint_gradient()
        if left is None:
            return x
        grad, finite = left
        scale = self.vp_scale(float(sigma))
        lr = learning_rate([patch.targets[index].weight for index in active])
        updated = fresh_adam_step(x / scale, grad.to(x) * scale, lr) * scale
        return torch.where(finite, updated, x)


def _shifted_callback(callback, offset: int, info: dict) -> None:
    callback({**info, "i": info["i"] + offset})
