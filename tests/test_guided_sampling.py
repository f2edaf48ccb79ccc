"""Guided sampling on the tiny model through the real nodes: the readout moves toward the target."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

from helpers import (ONE_PASS, STEPS, TINY_CKPT, TINY_LORA, SpatialBed, assert_lowered, assert_model_untouched,
                     assert_plot_shows_losses, call_node, model_state, pack_module, schema_inputs,
                     with_tiny_controlnet)
from tiny.models import tiny_head_name

SDXL_DIMS = [1280] * 3 + [640] * 3 + [320] * 3
LOWERED_TO = {"sd15": 0.8, "sdxl": 0.92}
"""The pose loss guided / unguided each family's tiny model must reach (measured: sd15 0.66, sdxl 0.86 with euler)."""


@pytest.fixture(scope="module")
def bed(family) -> SpatialBed:
    return SpatialBed(family=family)


@pytest.mark.every_comfyui
def test_weight_zero_or_no_targets_is_bit_identical_to_ksampler(bed):
    plain = bed.ksampler(bed.model)
    assert torch.equal(bed.guided(bed.target(weight=0.0))[0], plain)
    assert torch.equal(bed.guided(())[0], plain)


@pytest.mark.parametrize("family, sampler", [("sd15", "euler"), ("sd15", "dpmpp_2m"), ("sd15", "ddim"), ("sd15", "uni_pc"),
                                             ("sdxl", "euler")], indirect=["family"])
def test_spatial_target_lowers_the_readout_loss(bed, sampler):
    """Every sampler kind (single-step, multistep, DDIM, predictor-corrector) on SD1.5; the SDXL family with one:
    the rule acts in the sampler-independent post-CFG function."""
    guidance = bed.target()
    plain = bed.loss(guidance, bed.ksampler(bed.model, sampler=sampler))
    guided = bed.loss(guidance, bed.guided(guidance, sampler=sampler)[0])
    assert guided < LOWERED_TO[bed.family] * plain, (guided, plain)


def test_default_weight_and_window_lower_the_loss(bed):
    guidance = call_node("ReadoutTarget", head=bed.head, **{k: v.default for k, v in
                         schema_inputs("ReadoutTarget", optional=False).items() if k != "head"},
                         target_image=bed.target()[0].image.movedim(1, -1))[0]
    assert guidance[0].weight == pytest.approx(0.43) and guidance[0].window.end_percent == 0.5
    assert bed.loss(guidance, bed.guided(guidance)[0]) < 0.95 * bed.loss(guidance, bed.ksampler(bed.model))


@pytest.mark.every_comfyui
def test_apply_readout_guidance_with_ksampler_advanced_matches_the_guided_sampler(bed):
    guidance = bed.target()
    patched = call_node("ApplyReadoutGuidance", model=bed.model, guidance=guidance, **ONE_PASS)[0]
    advanced = call_node("KSamplerAdvanced", model=patched, add_noise="enable", noise_seed=1, steps=STEPS, cfg=5.0,
                         sampler_name="euler", scheduler="normal", positive=bed.pos, negative=bed.neg,
                         latent_image=bed.latent, start_at_step=0, end_at_step=10000,
                         return_with_leftover_noise="disable")[0]["samples"]
    assert torch.equal(advanced, bed.guided(guidance)[0])


def test_two_chained_targets_each_with_its_own_head(bed):
    depth = call_node("LoadReadoutHead", head_name=tiny_head_name("depth"))[0]
    depth_map = bed.readout(bed.ksampler(bed.model, seed=7), head=depth)
    depth_image = pack_module("readout.heads.readouts").spatial_to_unit(depth_map, depth.config.control_range).movedim(1, -1)
    chain = call_node("ReadoutTarget", head=depth, weight=1.0, start_percent=0.0, end_percent=1.0,
                      target_image=depth_image, guidance=bed.target())[0]
    assert [t.head.config.kind for t in chain] == ["pose", "depth"]
    samples, plot = bed.guided(chain)
    plain = bed.ksampler(bed.model)
    depth_loss = lambda s: float(chain[1].loss(bed.readout(s, head=depth)).sum())  # noqa: E731
    assert depth_loss(samples) < depth_loss(plain)
    assert bed.loss(chain, samples) < bed.loss(chain, plain)
    assert_plot_shows_losses(plot, [t.label for t in chain])


@pytest.mark.every_comfyui
def test_with_controlnet(bed):
    pos, neg = with_tiny_controlnet(bed.pos, bed.neg, bed.vae)
    guidance = bed.target()
    plain = bed.ksampler(bed.model, positive=pos, negative=neg)
    assert not torch.equal(plain, bed.ksampler(bed.model)), "the ControlNet had no effect"
    assert_lowered(bed, guidance, bed.guided(guidance, positive=pos, negative=neg)[0], plain)


def zero_gradient_head(head):
    """A copy of the head whose last output layer has zero weights: its readout is constant, its gradient exactly 0."""
    module = copy.deepcopy(head.module)
    with torch.no_grad():
        module.output_head[-2].weight.zero_()
    return pack_module("readout.heads.head_model").managed_head("zero_gradient.safetensors", head.config, module)


@pytest.mark.parametrize("branch", ["cond", "uncond"])
def test_one_loss_branch_splits_the_call_without_changing_the_unet_output(bed, branch):
    """With one loss branch the other CFG chunk runs in its own call (ControlNet residuals, prompts and sigmas cut
    to match); with a zero gradient, guided sampling must then reproduce KSampler for a batch of two."""
    pos, neg = with_tiny_controlnet(bed.pos, bed.neg, bed.vae)
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=2)[0]
    guidance = bed.target(head=zero_gradient_head(bed.head))
    plain = bed.ksampler(bed.model, positive=pos, negative=neg, latent=latent)
    guided = bed.guided(guidance, positive=pos, negative=neg, latent=latent, loss_branch=branch)[0]
    assert not torch.equal(plain, bed.ksampler(bed.model, latent=latent)), "the ControlNet had no effect"
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=2e-3)  # measured 6e-4: batch 2 vs 4 GEMMs


@pytest.mark.every_comfyui
def test_with_lora(bed):
    model, _ = call_node("LoraLoader", model=bed.model, clip=bed.clip, lora_name=TINY_LORA,
                         strength_model=1.0, strength_clip=1.0)
    guidance = bed.target()
    assert_lowered(bed, guidance, bed.guided(guidance, model=model)[0], bed.ksampler(model))


@pytest.mark.every_comfyui
def test_at_cfg_one(bed):
    guidance = bed.target()
    assert_lowered(bed, guidance, bed.guided(guidance, cfg=1.0)[0], bed.ksampler(bed.model, cfg=1.0))


def test_with_batch_of_two(bed):
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=2)[0]
    guidance = bed.target()
    samples, plain = bed.guided(guidance, latent=latent)[0], bed.ksampler(bed.model, latent=latent)
    assert samples.shape[0] == 2 and torch.isfinite(samples).all()
    for i in range(2):
        assert float(guidance[0].loss(bed.readout(samples[i:i + 1]))) < float(guidance[0].loss(bed.readout(plain[i:i + 1])))


@pytest.mark.every_comfyui
def test_in_lowvram_mode(bed, monkeypatch):
    import comfy.model_management as mm

    model = call_node("CheckpointLoaderSimple", ckpt_name=TINY_CKPT)[0]
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    free = 1.6 * 1024 ** 3
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free)
    monkeypatch.setattr(mm, "minimum_inference_memory", lambda: 1.5 * 1024 ** 3)
    guidance = bed.target()
    plain = bed.ksampler(model)
    samples = bed.guided(guidance, model=model)[0]
    assert model.model.model_lowvram, "the model was not partially loaded"
    monkeypatch.undo()
    mm.unload_all_models()
    assert_lowered(bed, guidance, samples, plain)


def test_options_branch_checkpointing_and_dtype(bed):
    guidance = bed.target()
    plain = bed.ksampler(bed.model)
    with_ckpt = bed.guided(guidance, gradient_checkpointing=True)[0]
    without = bed.guided(guidance, gradient_checkpointing=False)[0]
    assert torch.allclose(with_ckpt, without, atol=1e-4)
    cond_only = bed.guided(guidance, loss_branch="cond")[0]
    uncond_only = bed.guided(guidance, loss_branch="uncond")[0]
    assert not torch.equal(cond_only, uncond_only)
    for samples in (cond_only, uncond_only, bed.guided(guidance, compute_dtype="bfloat16")[0]):
        assert_lowered(bed, guidance, samples, plain)


def fresh_plain(bed) -> torch.Tensor:
    return bed.ksampler(call_node("CheckpointLoaderSimple", ckpt_name=TINY_CKPT)[0])


def test_model_is_clean_after_a_successful_run(bed):
    bed.ksampler(bed.model)
    before = model_state(bed.model)
    bed.guided(bed.target())
    assert_model_untouched(bed.model, before)
    assert torch.equal(bed.ksampler(bed.model), fresh_plain(bed))


def failing_head(bed, monkeypatch, effect):
    head = call_node("LoadReadoutHead", head_name=tiny_head_name("pose"))[0]
    original = head.module.forward

    def forward(*args, **kwargs):
        effect()
        return original(*args, **kwargs)

    monkeypatch.setattr(head.module, "forward", forward)
    return bed.target(head=head)


@pytest.mark.every_comfyui
def test_model_is_clean_after_an_error_inside_guidance(bed, monkeypatch):
    def boom():
        raise RuntimeError("boom inside guidance")

    bed.ksampler(bed.model)
    before = model_state(bed.model)
    with pytest.raises(RuntimeError, match="boom inside guidance"):
        bed.guided(failing_head(bed, monkeypatch, boom))
    assert_model_untouched(bed.model, before)
    assert torch.equal(bed.ksampler(bed.model), fresh_plain(bed))


@pytest.mark.every_comfyui
def test_model_is_clean_after_a_user_cancel(bed, monkeypatch):
    import comfy.model_management as mm

    bed.ksampler(bed.model)
    before = model_state(bed.model)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            bed.guided(failing_head(bed, monkeypatch, lambda: mm.interrupt_current_processing(True)))
    finally:
        mm.interrupt_current_processing(False)
    assert_model_untouched(bed.model, before)
    assert torch.equal(bed.ksampler(bed.model), fresh_plain(bed))


def test_target_of_another_size_and_aspect_is_resized(bed):
    unit = bed.unit_map(bed.target_map).movedim(-1, 1)
    wide = F.interpolate(unit, size=(48, 112), mode="nearest").movedim(1, -1)
    guidance = bed.target(image=wide)
    assert_lowered(bed, guidance, bed.guided(guidance)[0], bed.ksampler(bed.model))


def test_nonfinite_gradient_skips_the_step_with_a_warning_on_the_node(bed, monkeypatch, caplog):
    head = call_node("LoadReadoutHead", head_name=tiny_head_name("pose"))[0]
    original = head.module.forward
    monkeypatch.setattr(head.module, "forward", lambda *a, **k: original(*a, **k) * float("nan"))
    with caplog.at_level(logging.WARNING):
        run = bed.guided_run(bed.target(head=head), loss_branch="both")
    samples = run["result"][0]["samples"]
    assert torch.isfinite(samples).all()
    # both branches in one call, every step skipped: KSampler's result up to the attention kernel (the guided call
    # runs torch's SDPA, KSampler the session's sub-quadratic kernel; measured max difference 4.7e-4 after 8 steps)
    torch.testing.assert_close(samples, bed.ksampler(bed.model), rtol=0, atol=1e-3)
    warning = f"the gradient was NaN or infinite at guided evaluation(s) {list(range(STEPS))}"
    assert run["ui"]["text"][0].startswith("WARNING: pose (") and warning in run["ui"]["text"][0]
    assert warning in caplog.text


def test_head_for_another_family_is_refused_at_the_sampler(bed, model_folders):
    heads, checkpoints = pack_module("readout.heads.architecture"), pack_module("readout.heads.files")
    config = heads.HeadConfig(kind="pose", family="sdxl", dims=tuple(SDXL_DIMS), use_output_head=True)
    with torch.inference_mode(False):
        checkpoints.save_head_safetensors(str(model_folders / "readout_heads" / "xl_pose.safetensors"), config,
                                          heads.ReadoutHead(config).state_dict())
    xl_head = call_node("LoadReadoutHead", head_name="xl_pose.safetensors")[0]
    guidance = bed.target(head=xl_head)
    with pytest.raises(ValueError, match="expects SDXL features .* but the model is SD1.5"):
        bed.guided(guidance)
    with pytest.raises(ValueError, match="expects SDXL features"):
        call_node("ApplyReadoutGuidance", model=bed.model, guidance=guidance)


def test_relative_head_is_refused_by_the_spatial_target(bed):
    head = call_node("LoadReadoutHead", head_name=tiny_head_name("correspondence"))[0]
    with pytest.raises(ValueError, match="head: ReadoutTarget needs a pose, depth or edge head"):
        bed.target(head=head)


def test_target_needs_exactly_one_map(bed):
    with pytest.raises(ValueError, match="target_image / target_readout: connect exactly one"):
        call_node("ReadoutTarget", head=bed.head, weight=1.0, start_percent=0.0, end_percent=0.5)
    with pytest.raises(ValueError, match="start_percent / end_percent"):
        call_node("ReadoutTarget", head=bed.head, weight=1.0, start_percent=0.8, end_percent=0.2,
            target_image=torch.zeros(1, 8, 8, 3))
