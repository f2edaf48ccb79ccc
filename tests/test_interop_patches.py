"""Readout guidance next to the model patches users chain (FreeU, SAG, PAG, LoRAs, attention replacements, model
sampling, Differential Diffusion, HyperTile), each on the real ComfyUI nodes and the tiny UNet with a middle block
(where SAG and PAG act)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Callable

import pytest
import torch

from helpers import (ONE_PASS, TINY_LORA, TINY_MIDDLE_UNET, TinyBed, assert_model_untouched, call_node, model_state,
                     pack_module, word_reading)

STEPS = 4
PROMPT = "a red cat on a blue sofa"
DRAG_POINTS = json.dumps([{"source": [16, 16], "target": [40, 40]}, {"source": [48, 20], "target": [30, 20]}])


class AttentionCalls:
    """A no-op attn2 replacement as IPAdapter-style packs install one: ordinary attention, counted."""

    def __init__(self) -> None:
        self.count = 0

    def __deepcopy__(self, memo: dict) -> "AttentionCalls":
        """Model clones deep-copy their patches: the copies count here too."""
        return self

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        self.count += 1
        return optimized_attention(q, k, v, heads=extra_options["n_heads"])


def attn2_replace(model, calls: AttentionCalls):
    patched = model.clone()
    for block, number in (("input", 1), ("middle", 0), ("output", 0), ("output", 1)):
        patched.set_model_attn2_replace(calls, block, number)
    return patched


def two_loras(model, clip):
    for strength in (1.0, 0.5):
        model, clip = call_node("LoraLoader", model=model, clip=clip, lora_name=TINY_LORA, strength_model=strength,
                                strength_clip=strength)
    return model


@dataclass
class Case:
    """One patch next to readout guidance: how the user's graph applies it and samples."""

    name: str
    patch: Callable
    sampler: dict = field(default_factory=dict)
    masked: bool = False


CASES = [
    Case("FreeU_V2", lambda bed, m: call_node("FreeU_V2", model=m, b1=1.3, b2=1.4, s1=0.9, s2=0.2)[0]),
    Case("FreeU", lambda bed, m: call_node("FreeU", model=m, b1=1.1, b2=1.2, s1=0.9, s2=0.2)[0]),
    Case("SelfAttentionGuidance", lambda bed, m: call_node("SelfAttentionGuidance", model=m, scale=0.5,
                                                           blur_sigma=2.0)[0]),
    Case("PerturbedAttentionGuidance", lambda bed, m: call_node("PerturbedAttentionGuidance", model=m, scale=3.0)[0]),
    Case("RescaleCFG", lambda bed, m: call_node("RescaleCFG", model=m, multiplier=0.7)[0]),
    Case("attn2_replace", lambda bed, m: attn2_replace(m, bed.attention_calls)),
    Case("two_LoRAs", lambda bed, m: two_loras(m, bed.clip)),
    Case("v_prediction", lambda bed, m: call_node("ModelSamplingDiscrete", model=m, sampling="v_prediction",
                                                  zsnr=False)[0]),
    Case("lcm", lambda bed, m: call_node("ModelSamplingDiscrete", model=m, sampling="lcm", zsnr=False)[0],
         sampler={"sampler_name": "lcm", "cfg": 1.0}),
    Case("DifferentialDiffusion", lambda bed, m: call_node("DifferentialDiffusion", model=m, strength=1.0)[0],
         masked=True),
    Case("HyperTile", lambda bed, m: call_node("HyperTile", model=m, tile_size=32, swap_size=1, max_depth=0,
                                               scale_depth=False)[0]),
]
TWO_PASS_CASES = [case for case in CASES if case.name in
                  ("SelfAttentionGuidance", "PerturbedAttentionGuidance", "attn2_replace")]
"""Patches that touch attention or call the model twice per step: self-guidance and drag run next to them too."""
SDXL_STEPS = {"FreeU_V2": STEPS}
"""The patches that also run on the tiny SDXL-family model, with their steps: FreeU_V2 picks the blocks it scales by
the SDXL family's channel counts (its 640-channel decoder blocks). SAG and PAG act on a middle block the same way in
both families, so they run on SD1.5's tiny UNet with one (they cost 57 s on the SDXL family, where they needed 8
steps to be outweighed by pose guidance)."""
FAMILY_CASES = [("sd15", c) for c in CASES] + [
    ("sdxl", replace(c, sampler={**c.sampler, "steps": SDXL_STEPS[c.name]})) for c in CASES if c.name in SDXL_STEPS]


class Bed(TinyBed):
    """A UNet with a middle block (SD1.5: the tiny UNet with one, the tiny checkpoint's has none), the checkpoint's
    CLIP, a prompt, a pose head and a reachable map."""

    def __init__(self, family: str = "sd15") -> None:
        super().__init__(PROMPT, family)
        if family == "sd15":
            self.model = call_node("UNETLoader", unet_name=TINY_MIDDLE_UNET, weight_dtype="default")[0]
        ramp = torch.linspace(0.0, 1.0, 64).expand(1, 64, 64).contiguous()
        self.masked_latent = call_node("SetLatentNoiseMask", samples=self.latent, mask=ramp)[0]
        self.head = self.load_head("pose")
        self.target_map = self.readout(self.ksampler(self.model, seed=7), self.head)
        self.attention_calls = AttentionCalls()
        self._plain: dict[tuple, torch.Tensor] = {}

    def inputs(self, model, case: Case | None = None, **extra) -> dict:
        inputs = dict(model=model, seed=1, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal",
                      positive=self.pos, negative=self.neg, latent_image=self.latent, denoise=1.0)
        if case is not None:
            inputs.update(case.sampler, **({"latent_image": self.masked_latent} if case.masked else {}))
        return {**inputs, **extra}

    def ksampler(self, model, case: Case | None = None, **extra) -> torch.Tensor:
        return call_node("KSampler", **self.inputs(model, case, **extra))[0]["samples"]

    def plain(self, model, case: Case | None, patched: bool) -> torch.Tensor:
        """KSampler on the case's graph, with or without its patch (each sampled once per module)."""
        key = (case.name if patched else None, json.dumps(case.sampler if case else {}), bool(case and case.masked))
        if key not in self._plain:
            self._plain[key] = self.ksampler(model, case)
        return self._plain[key]

    def guided(self, model, guidance, case: Case | None = None, **options) -> tuple[torch.Tensor, torch.Tensor]:
        latent, _, reference = call_node("ReadoutGuidedKSampler", guidance=guidance, **self.inputs(model, case),
                                         **{**ONE_PASS, **options})
        return latent["samples"], reference["samples"]

    def spatial_target(self, weight: float = 1.0):
        unit = pack_module("readout.heads.readouts").spatial_to_unit(self.target_map, self.head.config.control_range)
        return call_node("ReadoutTarget", head=self.head, weight=weight, start_percent=0.0, end_percent=1.0,
                         target_image=unit.movedim(1, -1))[0]

    def spatial_loss(self, guidance, samples: torch.Tensor) -> float:
        return float(guidance[0].loss(self.readout(samples, self.head)).sum())

    def centroid(self, samples: torch.Tensor) -> torch.Tensor:
        maps = word_reading(self.model, self.clip, PROMPT, self.pos, samples, "cat")[0]
        return pack_module("readout.targets.self_guidance").centroid(maps)[0]

    def drag(self, weight: float):
        y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
        image = torch.stack([x, y, 1 - x * y], dim=-1)[None]
        return call_node("ReadoutDragTarget", correspondence_head=self.load_head("correspondence"), points=DRAG_POINTS,
                         drag_weight=weight, start_percent=0.0, end_percent=1.0, reference_image=image)[0]

    def drag_loss(self, target, edited: torch.Tensor, reference: torch.Tensor) -> float:
        return float(target.loss(self.readout(edited, target.head), self.readout(reference, target.head)).sum())


@pytest.fixture(scope="module")
def bed(family) -> Bed:
    return Bed(family)


@pytest.fixture
def loss_histories(monkeypatch) -> list:
    """Every loss history the guided sampler hands to its loss plot."""
    histories = []
    plot = pack_module("nodes.guidance").plot_losses
    monkeypatch.setattr(pack_module("nodes.guidance"), "plot_losses",
                        lambda history, labels: histories.append(history) or plot(history, labels))
    return histories


def count_calls(monkeypatch, module) -> list:
    """A list that grows by one at every forward of the module (the head runs once per guided UNet call)."""
    calls = []
    forward = module.forward
    monkeypatch.setattr(module, "forward", lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs))
    return calls


def assert_patch_acts(bed, case: Case, plain: torch.Tensor, unpatched: torch.Tensor, calls_before: int) -> None:
    if case.name == "attn2_replace":
        assert bed.attention_calls.count > calls_before, "the attn2 replacement was not called"
    else:
        assert not torch.equal(plain, unpatched), f"{case.name} had no effect"


@pytest.mark.parametrize("family, case", FAMILY_CASES, ids=[f"{c.name}-{f}" for f, c in FAMILY_CASES],
                         indirect=["family"])
def test_spatial_guidance_next_to(bed, case, monkeypatch, loss_histories):
    """The model state is compared before the loss readouts: they run the bare model, which makes ComfyUI take the
    patched weights (LoRA) off the shared module."""
    unpatched = bed.plain(bed.model, case, patched=False)
    patched = case.patch(bed, bed.model)
    plain = bed.plain(patched, case, patched=True)
    model_before, base_before = model_state(patched), model_state(bed.model)
    calls_before = bed.attention_calls.count
    assert torch.equal(bed.guided(patched, bed.spatial_target(weight=0.0), case)[0], plain), "weight 0 changed the image"
    guidance = bed.spatial_target()
    head_calls = count_calls(monkeypatch, bed.head.module)
    guided = bed.guided(patched, guidance, case)[0]
    monkeypatch.undo()
    assert_model_untouched(patched, model_before)
    assert_model_untouched(bed.model, base_before)
    assert torch.isfinite(guided).all()
    guided_loss, plain_loss = bed.spatial_loss(guidance, guided), bed.spatial_loss(guidance, plain)
    print(f"{case.name}: loss guided {guided_loss:.4f}, unguided {plain_loss:.4f}")
    assert guided_loss < 0.95 * plain_loss
    steps = case.sampler.get("steps", STEPS)
    assert len(head_calls) == len(loss_histories[-1][0]) == steps, "one guided evaluation per euler step, no more"
    assert_patch_acts(bed, case, plain, unpatched, calls_before)


@pytest.mark.parametrize("case", TWO_PASS_CASES, ids=lambda case: case.name)
def test_self_guidance_and_drag_next_to(bed, case):
    """A Self-Guidance move and a drag chained in one guided run: the edit moves the word toward its goal and the
    dragged points toward theirs, against the reference branch (the same noise, unguided)."""
    patched = case.patch(bed, bed.model)
    bed.plain(patched, case, patched=True)
    before = model_state(patched)
    drag = bed.drag(1.0)
    goal = torch.tensor([0.2, 0.8])
    guidance = call_node("SelfGuidanceTarget", clip=bed.clip, prompt=PROMPT, words="cat", edit="move_to", weight=8.0,
                         dx=0.0, dy=0.0, x=0.2, y=0.8, size_factor=1.0, start_percent=0.0, end_percent=1.0,
                         guidance=drag)[0]
    edited, reference = bed.guided(patched, guidance, case)
    assert_model_untouched(patched, before)
    assert torch.isfinite(edited).all()
    moved, start = bed.centroid(edited), bed.centroid(reference)
    drag_losses = bed.drag_loss(drag[0], edited, reference), bed.drag_loss(drag[0], reference, reference)
    print(f"{case.name}: centroid unguided {start.tolist()}, guided {moved.tolist()}; "
          f"drag loss guided {drag_losses[0]:.4f}, unguided {drag_losses[1]:.4f}")
    assert (moved - goal).abs().sum() < 0.95 * (start - goal).abs().sum()
    assert drag_losses[0] < 0.9 * drag_losses[1]


def test_sag_records_its_attention_inside_the_guided_pass(bed):
    """With the uncond loss branch SAG's attention replacement runs in the guided (checkpointed) call: its
    recomputation must find SAG's patch again (the block it ran in), and SAG must still get its attention map."""
    case = next(case for case in CASES if case.name == "SelfAttentionGuidance")
    patched = case.patch(bed, bed.model)
    plain = bed.plain(patched, case, patched=True)
    guidance = bed.spatial_target()
    guided = bed.guided(patched, guidance, case, loss_branch="uncond")[0]
    assert bed.spatial_loss(guidance, guided) < 0.95 * bed.spatial_loss(guidance, plain)


def test_torch_compile_is_refused_naming_both_nodes(bed):
    message = r"TorchCompileModel cannot be combined with readout guidance .* Remove TorchCompileModel"
    compiled = call_node("TorchCompileModel", model=bed.model, backend="inductor")[0]
    before = model_state(compiled)
    with pytest.raises(ValueError, match=message):
        bed.guided(compiled, bed.spatial_target())
    guided = call_node("ApplyReadoutGuidance", model=bed.model, guidance=bed.spatial_target())[0]
    compiled_after = call_node("TorchCompileModel", model=guided, backend="inductor")[0]
    with pytest.raises(ValueError, match=message):
        bed.ksampler(compiled_after)
    assert_model_untouched(compiled, before)
