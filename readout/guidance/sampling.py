"""Guided sampling with ComfyUI's own sampler, including the reference branch relative targets need."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .patch import GuidanceOptions, ReadoutGuidancePatch, apply_readout_guidance
from ..backbones.registry import backbone_for
from ..targets.reference import InvertedReference


@dataclass
class GuidedResult:
    edited: torch.Tensor
    reference: torch.Tensor
    patch: ReadoutGuidancePatch


def common_reference(targets: tuple) -> InvertedReference | None:
    """The one real-image reference the relative targets share (None: a generated reference)."""
    references = {id(t.reference): t.reference for t in targets if t.relative}
    if len(references) > 1:
        raise ValueError("guidance: relative targets use different references; connect the same reference to all")
    return next(iter(references.values()), None)


def _start_noise(model_patcher, latent: torch.Tensor, seed: int, reference: InvertedReference | None,
                 share_noise: bool, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise for the [reference, edited] batch, and the latent the sampler starts from."""
    import comfy.sample

    base = comfy.sample.prepare_noise(latent, seed)
    if reference is None:
        edited = base if share_noise else comfy.sample.prepare_noise(latent, seed + 1)
        return torch.cat([base, edited]), torch.cat([latent, latent])
    model_sampling = model_patcher.get_model_object("model_sampling")
    sigma0 = sigmas[0].reshape(1)
    max_denoise = float(sigma0) >= float(model_sampling.sigma_max) * (1 - 1e-5)
    scale = model_sampling.noise_scaling(sigma0, torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), max_denoise)
    inverted = (reference.start_latent / scale).expand_as(latent)
    edited = inverted if share_noise else base
    zeros = torch.zeros_like(latent)
    return torch.cat([inverted, edited]).float(), torch.cat([zeros, zeros])


def sample_guided(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive, negative,
                  latent: dict, denoise: float, targets: tuple, options: GuidanceOptions) -> GuidedResult:
    """Sample with readout guidance; with relative targets a reference branch is sampled next to the edit."""
    import comfy.sample
    import comfy.samplers
    import comfy.utils
    import latent_preview
    import nodes

    if options.rule == "official":
        from .rules.official import check_official_sampler
        check_official_sampler(sampler_name)
    if not any(t.relative for t in targets):
        guided, patch = apply_readout_guidance(model, targets, options)
        edited = nodes.common_ksampler(guided, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                       latent, denoise=denoise)[0]["samples"]
        return GuidedResult(edited, edited, patch)
    if "noise_mask" in latent:
        raise ValueError("latent_image: relative guidance (drag, appearance, identity) does not take a noise mask "
                         "(inpainting latent) yet: use a latent without a mask")
    reference = common_reference(targets)
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    sigmas = comfy.samplers.KSampler(model, steps=steps, device="cpu", sampler=sampler_name, scheduler=scheduler,
                                     denoise=denoise, model_options=model.model_options).sigmas
    if reference is not None:
        reference.check_latent_size(tuple(samples.shape[-2:]), backbone_for(model).latent_scale)
        reference.check_schedule(sigmas, steps, scheduler)
    guided, patch = apply_readout_guidance(model, targets, options, allow_relative=True,
                                           branch_split=samples.shape[0], reference=reference)
    share_noise = any(t.shares_reference_noise for t in targets)
    noise, start = _start_noise(guided, samples, seed, reference, share_noise, sigmas)
    callback = latent_preview.prepare_callback(guided, steps)
    out = comfy.sample.sample(guided, noise, steps, cfg, sampler_name, scheduler, positive, negative, start,
                              denoise=denoise, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                              seed=seed)
    split = samples.shape[0]
    reference_out = out[:split] if reference is None else reference.source_latent.expand_as(out[:split]).to(out)
    return GuidedResult(out[split:], reference_out, patch)
