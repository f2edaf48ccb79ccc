"""Readout guidance next to the samplers, guiders, conditioning and weight dtypes users chain, on the real nodes.

Every case samples one graph four ways: without our nodes, with a weight-0 target (must be bit-identical),
with a target (its loss must drop) and without the other element (which must change the output; weight dtypes:
the UNet must be stored in that dtype); the shared model must be as before."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

from helpers import (ONE_PASS, TINY_CKPT, TINY_T2I_ADAPTER, SpatialBed, assert_lowered, assert_model_untouched,
                     call_node, model_state, pack_module, with_tiny_controlnet)

STEPS = 4
SPLIT_STEP = 2


@pytest.fixture(scope="module")
def bed(family) -> SpatialBed:
    return SpatialBed(steps=STEPS, family=family)


def guided_model(model, guidance, **options):
    """The model as ApplyReadoutGuidance patches it (no guidance: the model itself)."""
    return model if guidance is None else call_node("ApplyReadoutGuidance", model=model, guidance=guidance,
                                                         **{**ONE_PASS, **options})[0]


def ksampler_graph(bed: SpatialBed, model, guidance, positive=None, negative=None, **options) -> torch.Tensor:
    """KSampler, or KSampler (Readout Guidance) when there is guidance."""
    if guidance is None:
        return bed.ksampler(model, positive=positive, negative=negative)
    return bed.guided(guidance, model=model, positive=positive, negative=negative, **options)[0]


def advanced(bed: SpatialBed, model, latent: dict, sampler: str, add_noise: str, start: int, end: int,
             leftover: str) -> dict:
    return call_node("KSamplerAdvanced", model=model, add_noise=add_noise, noise_seed=1, steps=bed.steps, cfg=5.0,
                     sampler_name=sampler, scheduler="normal", positive=bed.pos, negative=bed.neg,
                     latent_image=latent, start_at_step=start, end_at_step=end,
                     return_with_leftover_noise=leftover)[0]


def two_passes(bed: SpatialBed, model, guidance, element: bool) -> torch.Tensor:
    """KSamplerAdvanced: a first pass leaves noise, a second (another sampler, add_noise off) continues it."""
    model = guided_model(model, guidance)
    if not element:
        return advanced(bed, model, bed.latent, "euler", "enable", 0, 10000, "disable")["samples"]
    first = advanced(bed, model, bed.latent, "euler", "enable", 0, SPLIT_STEP, "enable")
    return advanced(bed, model, first, "dpmpp_2m", "disable", SPLIT_STEP, 10000, "disable")["samples"]


def prompt(bed: SpatialBed, text: str) -> list:
    return call_node("CLIPTextEncode", text=text, clip=bed.clip)[0]


GUIDERS: dict[str, Callable] = {
    "CFGGuider": lambda bed, model: call_node("CFGGuider", model=model, positive=bed.pos, negative=bed.neg, cfg=5.0),
    "DualCFGGuider": lambda bed, model: call_node(
        "DualCFGGuider", model=model, cond1=bed.pos, cond2=prompt(bed, "a red hat"), negative=bed.neg, cfg_conds=5.0,
        cfg_cond2_negative=2.0, style="regular"),
    "PerpNegGuider": lambda bed, model: call_node(
        "PerpNegGuider", model=model, positive=bed.pos, negative=prompt(bed, "a red hat"),
        empty_conditioning=bed.neg, cfg=5.0, neg_scale=1.0),
    "BasicGuider": lambda bed, model: call_node("BasicGuider", model=model, conditioning=bed.pos),
}


def custom_advanced(guider: str) -> Callable:
    """SamplerCustomAdvanced with this guider (without it: BasicGuider, or CFGGuider in place of BasicGuider)."""
    def sample(bed: SpatialBed, model, guidance, element: bool) -> torch.Tensor:
        model = guided_model(model, guidance)
        name = guider if element else ("CFGGuider" if guider == "BasicGuider" else "BasicGuider")
        sigmas = call_node("BasicScheduler", model=model, scheduler="normal", steps=bed.steps, denoise=1.0)[0]
        return call_node("SamplerCustomAdvanced", noise=call_node("RandomNoise", noise_seed=1)[0],
                         guider=GUIDERS[name](bed, model)[0],
                         sampler=call_node("KSamplerSelect", sampler_name="euler")[0], sigmas=sigmas,
                         latent_image=bed.latent)[0]["samples"]
    return sample


def t2i_adapter(bed: SpatialBed, model, guidance, element: bool) -> torch.Tensor:
    """Both prompts through the tiny T2I adapter (ControlNetLoader, ControlNetApplyAdvanced)."""
    pos, neg = with_tiny_controlnet(bed.pos, bed.neg, bed.vae, TINY_T2I_ADAPTER) if element else (bed.pos, bed.neg)
    return ksampler_graph(bed, model, guidance, positive=pos, negative=neg)


def area_prompt(bed: SpatialBed, model, guidance, element: bool) -> torch.Tensor:
    """The prompt combined with a second prompt restricted to the top-left quarter (ConditioningSetArea)."""
    positive = bed.pos
    if element:
        area = call_node("ConditioningSetArea", conditioning=prompt(bed, "a blue ball"), width=32, height=32, x=0, y=0,
                         strength=1.0)[0]
        positive = call_node("ConditioningCombine", conditioning_1=bed.pos, conditioning_2=area)[0]
    return ksampler_graph(bed, model, guidance, positive=positive)


def combined_prompts(bed: SpatialBed, model, guidance, element: bool) -> torch.Tensor:
    """Two whole-image prompts combined (ConditioningCombine): two cond chunks in one UNet call."""
    positive = call_node("ConditioningCombine", conditioning_1=bed.pos, conditioning_2=prompt(bed, "a blue ball"))[0]
    return ksampler_graph(bed, model, guidance, positive=positive if element else bed.pos)


_MODELS: dict[str, object] = {}


def load_with_weights(weights: str):
    """The tiny checkpoint's UNet stored as fp16/bf16 (--fp16-unet / --bf16-unet) or fp8 (UNETLoader weight_dtype);
    on the CPU ComfyUI computes in float32 and casts each layer's weights on the fly."""
    if weights in _MODELS:
        return _MODELS[weights]
    import comfy.cli_args
    import folder_paths

    if weights == "fp8_e4m3fn":
        saved = folder_paths.folder_names_and_paths["diffusion_models"]
        folder_paths.folder_names_and_paths["diffusion_models"] = folder_paths.folder_names_and_paths["checkpoints"]
        try:
            model = call_node("UNETLoader", unet_name=TINY_CKPT, weight_dtype=weights)[0]
        finally:
            folder_paths.folder_names_and_paths["diffusion_models"] = saved
    else:
        flag = f"{weights}_unet"
        setattr(comfy.cli_args.args, flag, True)
        try:
            model = call_node("CheckpointLoaderSimple", ckpt_name=TINY_CKPT)[0]
        finally:
            setattr(comfy.cli_args.args, flag, False)
    _MODELS[weights] = model
    return model


def weights_case(compute_dtype: str) -> Callable:
    """The graph on a model with other stored weights, the guided pass under this compute dtype."""
    def sample(bed: SpatialBed, model, guidance, element: bool) -> torch.Tensor:
        return ksampler_graph(bed, model, guidance, compute_dtype=compute_dtype)
    return sample


@dataclass(frozen=True)
class Case:
    """One combination; `stored` (weights cases): the dtype the UNet's weights must be stored in."""

    name: str
    sample: Callable[[SpatialBed, object, tuple | None, bool], torch.Tensor]
    model: Callable[[SpatialBed], object] = lambda bed: bed.model
    stored: torch.dtype | None = None


WEIGHTS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}
WEIGHT_CASES = [("fp16", "auto"), ("fp16", "float16"), ("bf16", "bfloat16"), ("fp8_e4m3fn", "auto"),
                ("fp8_e4m3fn", "bfloat16")]
CASES = [
    Case("KSamplerAdvanced two passes", two_passes),
    *[Case(f"SamplerCustomAdvanced {g}", custom_advanced(g)) for g in GUIDERS],
    Case("T2I adapter", t2i_adapter),
    Case("ConditioningSetArea", area_prompt),
    Case("ConditioningCombine", combined_prompts),
    *[Case(f"{w} weights, compute {c}", weights_case(c), lambda bed, w=w: load_with_weights(w), WEIGHTS[w])
      for w, c in WEIGHT_CASES],
]


GUIDED_EFFECT_KEPT = 0.5
"""Guided, the other node must still change the latent by at least this share of what it changes unguided."""


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_guidance_next_to(bed, case):
    """Each node works beside guidance on SD1.5 (family-independent: the sampler, guider and conditioning plumbing;
    the families' own paths run in test_guided_sampling.py and test_backbones.py)."""
    model = case.model(bed)
    plain = case.sample(bed, model, None, True)
    before = model_state(model)
    assert torch.equal(case.sample(bed, model, bed.target(weight=0.0), True), plain), "weight 0 changed the latent"
    guidance = bed.target()
    guided = case.sample(bed, model, guidance, True)
    assert_lowered(bed, guidance, guided, plain)
    if case.stored is None:
        unguided_effect = float((plain - case.sample(bed, model, None, False)).abs().mean())
        guided_effect = float((guided - case.sample(bed, model, guidance, False)).abs().mean())
        assert unguided_effect > 0, f"{case.name} had no effect"
        assert guided_effect > GUIDED_EFFECT_KEPT * unguided_effect, f"{case.name}'s effect was lost under guidance"
    else:
        assert {p.dtype for p in model.model.diffusion_model.parameters()} == {case.stored}
    assert_model_untouched(model, before)


def test_area_only_prompt_is_refused_on_the_first_step(bed):
    area = call_node("ConditioningSetArea", conditioning=bed.pos, width=32, height=32, x=0, y=0, strength=1.0)[0]
    with pytest.raises(ValueError, match=r"ConditioningSetArea: .* loss branch \(cond\) .*\(ConditioningCombine\)"):
        bed.guided(bed.target(), positive=area)
    uncond = bed.guided(bed.target(), positive=area, loss_branch="uncond")[0]
    assert torch.isfinite(uncond).all() and not torch.equal(uncond, bed.ksampler(bed.model, positive=area))


def readouts(bed: SpatialBed, samples: torch.Tensor) -> torch.Tensor:
    return torch.cat([bed.readout(samples[i:i + 1]) for i in range(samples.shape[0])])


def test_one_target_map_per_latent(bed):
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=2)[0]
    maps = torch.cat([bed.target_map, bed.readout(bed.ksampler(bed.model, seed=9))])
    straight, swapped = bed.target(image=bed.unit_map(maps)), bed.target(image=bed.unit_map(maps.flip(0)))
    plain = bed.ksampler(bed.model, latent=latent)
    assert torch.equal(bed.guided(bed.target(weight=0.0, image=bed.unit_map(maps)), latent=latent)[0], plain)
    guided, crossed = bed.guided(straight, latent=latent)[0], bed.guided(swapped, latent=latent)[0]
    own = straight[0].loss(readouts(bed, guided))
    assert (own < straight[0].loss(readouts(bed, plain))).all(), "a latent did not move toward its own map"
    assert (own < straight[0].loss(readouts(bed, crossed))).all(), "a latent followed the other latent's map"
    with pytest.raises(ValueError, match=r"target_image: 3 maps for a batch of 2 latents; connect one map .* \(2\)"):
        bed.guided(bed.target(image=bed.unit_map(torch.cat([maps, maps[:1]]))), latent=latent)
    with pytest.raises(ValueError, match=r"mask: 3 maps for a batch of 2 latents"):
        bed.guided(bed.target(image=bed.unit_map(maps), mask=torch.ones(3, 64, 64)), latent=latent)


def test_dual_cfg_guider_loss_reads_cond1(bed, monkeypatch):
    """DualCFGGuider batches [negative, cond2, cond1]: the cond loss branch must still read cond1, the positive."""
    model = guided_model(bed.model, bed.target())
    patch = pack_module("readout.guidance.patch").find_patch(model)
    read = []
    grad_pass = patch._grad_pass

    def spy(executor, active, x, t, c_concat, c_crossattn, *rest):
        read.append(c_crossattn)
        return grad_pass(executor, active, x, t, c_concat, c_crossattn, *rest)

    monkeypatch.setattr(patch, "_grad_pass", spy)
    custom_advanced("DualCFGGuider")(bed, model, None, True)
    assert read and all(c.shape[0] == 1 and torch.equal(c[0], bed.pos[0][0][0]) for c in read)


def test_the_guidance_is_the_guided_models_attachment_shared_by_its_clones(bed):
    """Apply Readout Guidance attaches its patch to the clone it returns (ComfyUI's attachments): the clones a
    sampler makes share it, the input model carries none, and chaining a second node makes a new patch with both
    targets while the first node's model keeps its own."""
    patch_module = pack_module("readout.guidance.patch")
    first = guided_model(bed.model, bed.target())
    patch = first.get_attachment(patch_module.PATCH_KEY)
    assert isinstance(patch, patch_module.ReadoutGuidancePatch) and len(patch.targets) == 1
    assert first.clone().get_attachment(patch_module.PATCH_KEY) is patch
    assert bed.model.get_attachment(patch_module.PATCH_KEY) is None
    second = guided_model(first, bed.target(weight=0.5))
    chained = second.get_attachment(patch_module.PATCH_KEY)
    assert chained is not patch and len(chained.targets) == 2 and len(patch.targets) == 1
