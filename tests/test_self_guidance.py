"""Self-Guidance targets on the tiny model: a prompt word's cross-attention moves and grows as asked."""
from __future__ import annotations

import pytest
import torch

from helpers import ONE_PASS, TinyBed, call_node, every_family, pack_module, with_tiny_controlnet, word_reading

PROMPT = "a red cat on a blue sofa"
STEPS = 8


class Bed(TinyBed):
    """Checkpoint, the prompt encoded, an empty latent and a way to measure a word's attention in a result."""

    def __init__(self, family: str = "sd15") -> None:
        super().__init__(PROMPT, family)

    def target(self, edit: str = "move_by", words: str = "cat", weight: float = 4.0, prompt: str = PROMPT,
               guidance=None, **values):
        inputs = dict(dx=0.25, dy=0.0, x=0.5, y=0.5, size_factor=1.5, start_percent=0.0, end_percent=1.0)
        inputs.update(values)
        return call_node("SelfGuidanceTarget", clip=self.clip, prompt=prompt, words=words, edit=edit, weight=weight,
                         guidance=guidance, **inputs)[0]

    def sampler_inputs(self, positive=None, negative=None) -> dict:
        return dict(model=self.model, seed=5, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="normal",
                    positive=positive or self.pos, negative=negative or self.neg, latent_image=self.latent,
                    denoise=1.0)

    def guided(self, guidance, **options):
        latent, _, reference = call_node("ReadoutGuidedKSampler", guidance=guidance,
                                         **{**self.sampler_inputs(), **ONE_PASS, **options})
        return latent["samples"], reference["samples"]

    def plain(self, **options) -> torch.Tensor:
        return call_node("KSampler", **{**self.sampler_inputs(), **options})[0]["samples"]

    def word_reading(self, samples: torch.Tensor, words: str = "cat") -> tuple[torch.Tensor, list[torch.Tensor]]:
        return word_reading(self.model, self.clip, PROMPT, self.pos, samples, words)

    def word_map(self, samples: torch.Tensor) -> torch.Tensor:
        return self.word_reading(samples)[0]

    def appearance(self, samples: torch.Tensor) -> torch.Tensor:
        maps, features = self.word_reading(samples)
        return pack_module("readout.targets.self_guidance").appearance(maps, features[-1])[0]

    def centroid(self, samples: torch.Tensor) -> torch.Tensor:
        return pack_module("readout.targets.self_guidance").centroid(self.word_map(samples))[0]

    def size(self, samples: torch.Tensor) -> float:
        return float(pack_module("readout.targets.self_guidance").size(self.word_map(samples))[0])


@pytest.fixture(scope="module")
def bed(family) -> Bed:
    return Bed(family)


@pytest.mark.every_comfyui
@every_family
def test_words_are_found_at_their_token_positions(bed):
    find = pack_module("readout.targets.prompt_tokens").word_token_positions
    assert find(bed.clip, PROMPT, "cat") == (3,), "start token, 'a', 'red', then 'cat'"
    assert find(bed.clip, PROMPT, "blue sofa") == (6, 7)
    with pytest.raises(ValueError, match="words: 'dog' is not in the prompt 'a red cat on a blue sofa'"):
        bed.target(words="dog")
    with pytest.raises(ValueError, match="words: name the word"):
        bed.target(words="  ")


@pytest.mark.every_comfyui
@every_family
def test_move_by_brings_the_centroid_toward_the_goal(bed):
    guidance = bed.target("move_by", dx=0.25, dy=0.0)
    edited, reference = bed.guided(guidance)
    plain = bed.plain()
    torch.testing.assert_close(reference, plain, rtol=1e-4, atol=1e-3)
    start = bed.centroid(plain)
    goal = start + torch.tensor([0.25, 0.0])
    moved = bed.centroid(edited)
    print(f"centroid unguided {start.tolist()}, goal {goal.tolist()}, guided {moved.tolist()}")
    assert (moved - goal).abs().sum() < 0.9 * (start - goal).abs().sum()
    assert moved[0] > start[0] + 0.02, "moved to the right"


def test_move_to_a_point(bed):
    goal = torch.tensor([0.2, 0.8])
    edited, _ = bed.guided(bed.target("move_to", x=0.2, y=0.8))
    start, moved = bed.centroid(bed.plain()), bed.centroid(edited)
    print(f"centroid unguided {start.tolist()}, guided {moved.tolist()}, goal {goal.tolist()}")
    assert (moved - goal).abs().sum() < 0.9 * (start - goal).abs().sum()


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_scale_size_changes_the_attention_mass_in_the_asked_direction(bed, factor):
    edited, reference = bed.guided(bed.target("scale_size", size_factor=factor))
    before, after = bed.size(reference), bed.size(edited)
    print(f"size x{factor}: unguided {before:.4f}, guided {after:.4f}")
    assert (after > 1.05 * before) if factor > 1 else (after < 0.95 * before)


def test_keep_appearance_while_moving(bed):
    """Moving changes the word's look; keep_appearance chained after the move keeps it closer to the unguided one."""
    move = bed.target("move_by", dx=0.25)
    moved, reference = bed.guided(move)
    kept, same_reference = bed.guided(bed.target("keep_appearance", guidance=move))
    torch.testing.assert_close(same_reference, reference, rtol=1e-4, atol=1e-3)
    goal = bed.appearance(reference)
    drift = {name: float((bed.appearance(samples) - goal).abs().mean()) for name, samples in
             (("move only", moved), ("move + keep_appearance", kept))}
    print("appearance drift from the unguided image:", {k: round(v, 4) for k, v in drift.items()})
    assert drift["move + keep_appearance"] < 0.9 * drift["move only"]
    assert bed.centroid(kept)[0] > bed.centroid(reference)[0], "still moved"


def test_copy_appearance_from_a_real_image(bed):
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    image = torch.stack([x, y, 1 - x * y], dim=-1)[None]
    reference = call_node("ReadoutInvertImage", model=bed.model, vae=bed.vae, image=image, positive=bed.pos,
                          steps=STEPS, scheduler="normal", refinements=2)[0]
    copy = bed.target("keep_appearance", reference=reference)
    edited, reconstructed = bed.guided(copy)
    goal = bed.appearance(reconstructed)
    distances = {name: float((bed.appearance(samples) - goal).abs().mean())
                 for name, samples in (("guided", edited), ("unguided", bed.plain()))}
    print("appearance distance to the real image:", {k: round(v, 4) for k, v in distances.items()})
    assert distances["guided"] < 0.9 * distances["unguided"]
    with pytest.raises(ValueError, match="reference: only keep_appearance takes a real reference image"):
        bed.target("move_by", reference=reference)


def test_weight_zero_is_bit_identical_to_unguided(bed):
    edited, _ = bed.guided(bed.target("move_to", weight=0.0))
    assert torch.equal(edited, bed.plain())
    edited, reference = bed.guided(bed.target("move_by", weight=0.0))
    assert torch.equal(edited, reference)


def test_with_a_learned_spatial_target_and_controlnet(bed):
    pos, neg = with_tiny_controlnet(bed.pos, bed.neg, bed.vae)
    head = bed.load_head("pose")
    pose_map = torch.zeros(1, 64, 64, 3)
    pose_map[:, 20:44, 10:54] = 1.0
    spatial = call_node("ReadoutTarget", head=head, weight=1.0, start_percent=0.0, end_percent=1.0,
                        target_image=pose_map)[0]
    guidance = bed.target("move_by", dx=0.25, guidance=spatial)
    latent, _, _ = call_node("ReadoutGuidedKSampler", guidance=guidance, **bed.sampler_inputs(pos, neg), **ONE_PASS)
    edited = latent["samples"]
    plain = bed.plain(positive=pos, negative=neg)
    assert torch.isfinite(edited).all()
    extract = pack_module("readout.heads.extract")
    with torch.inference_mode():
        losses = [float(spatial[0].loss(extract.latent_readout(bed.model, head, s, bed.neg, 0, 0)).sum())
                  for s in (edited, plain)]
    start, moved = bed.centroid(plain), bed.centroid(edited)
    print(f"pose loss guided {losses[0]:.4f} vs unguided {losses[1]:.4f}; centroid x {start[0]:.3f} -> {moved[0]:.3f}")
    assert losses[0] < losses[1]
    assert moved[0] > start[0]


def test_needs_the_cond_branch_and_a_matching_conditioning(bed):
    with pytest.raises(ValueError, match="loss_branch: self-guidance .* use cond, not both"):
        bed.guided(bed.target("move_to"), loss_branch="both")
    long_prompt = "a photo, " * 40 + "a cat"
    guidance = bed.target("move_to", prompt=long_prompt)
    with pytest.raises(ValueError, match=r"token \d+ is outside the 77 tokens of the conditioning"):
        bed.guided(guidance)
    hooked = [name for name, module in bed.model.model.diffusion_model.named_modules() if module._forward_hooks]
    assert not hooked, f"attention hooks left on the shared model after the error: {hooked[:3]}"


@every_family
def test_words_tokenized_by_another_familys_clip_are_refused(bed):
    self_guidance = pack_module("readout.targets.self_guidance")
    window = pack_module("readout.targets.base").StepWindow(0.0, 1.0)
    other = "sdxl" if bed.family == "sd15" else "sd15"
    target = self_guidance.SelfGuidanceTarget("cat", (2,), other, "move_to", 4.0, window, point=(0.2, 0.8))
    with pytest.raises(ValueError, match=f"clip: the words 'cat' were tokenized with an {other} CLIP but the model "
                                         f"is {bed.family}"):
        bed.guided((target,))


def test_edits_relative_to_the_unguided_image_need_the_guided_sampler(bed):
    with pytest.raises(ValueError, match="relative targets \\(self-guidance move_by 'cat'\\) need KSampler"):
        call_node("ApplyReadoutGuidance", model=bed.model, guidance=bed.target("move_by"))
    guided = call_node("ApplyReadoutGuidance", model=bed.model, guidance=bed.target("move_to", x=0.2, y=0.8),
                       **ONE_PASS)[0]
    moved = call_node("KSampler", **{**bed.sampler_inputs(), "model": guided})[0]["samples"]
    assert bed.centroid(moved)[0] < bed.centroid(bed.plain())[0], "move_to works through Apply Readout Guidance"
