"""The families users sample with in late 2026 (Flux.2, Z-Image's NextDiT, Qwen-Image, Krea 2) on their tiny models
through UNETLoader, at CFG 1 as their distilled models sample: a smoke set each (detection and readout widths,
features on the patch grid, a spatial target lowers the head's loss at CFG 1 and with CFG, a drag lowers the drag
loss, training). ComfyUI 0.33 only: 0.3.75 detects Flux.2 only at full width (tiny/families.py)."""
from __future__ import annotations

import pytest
import torch

from helpers import (ONE_PASS, assert_drag_lowers_the_drag_loss, assert_features_are_image_tokens_on_the_grid,
                     assert_self_guidance_moves_the_word,
                     assert_model_is_the_family_with_its_widths, call_node, node_output, pack_module, tiny_head_name)
from tiny.dit import TINY_DIT_CLIP_L, TINY_DIT_VAE
from tiny.families import (DETECTED_SINCE, KREA2_TEXT_WIDTH, TAEF2, QWEN_TEXT_WIDTH, TINY_FLUX2, TINY_KREA2,
                           TINY_LUMINA2, TINY_QWEN_IMAGE, text_conditioning)
from tiny.parts import comfyui_version
from tiny.models import readout_dims

registry = pack_module("readout.backbones.registry")
CLIP_L_WIDTH = pack_module("readout.backbones.dit").CLIP_L_WIDTH

FAMILIES = {"flux2": TINY_FLUX2, "lumina2": TINY_LUMINA2, "qwen_image": TINY_QWEN_IMAGE, "krea2": TINY_KREA2}
LATENT = {"flux2": ("EmptyFlux2LatentImage", 128, 16), "lumina2": ("EmptySD3LatentImage", 16, 8),
          "qwen_image": ("EmptySD3LatentImage", 16, 8), "krea2": ("EmptySD3LatentImage", 16, 8)}
"""The empty-latent node each family's templates use, its channels and pixels per latent cell."""
TEXT_WIDTH = {"lumina2": 768, "qwen_image": QWEN_TEXT_WIDTH, "krea2": KREA2_TEXT_WIDTH}
"""The families whose tests build CONDITIONING directly, at their text width (the others encode with the tiny
CLIP-L)."""
PATCH = {"flux2": 1, "lumina2": 2, "qwen_image": 2, "krea2": 2}
SIZE, STEPS, PROMPT = 64, 8, "a red cube on a table"
TINY_WEIGHT = 0.3
"""The spatial weight on these random tiny models: at 1.0 their latents grow threefold in 8 steps (a calibration per
family needs real latents' statistics; see docs/families.md)."""
family = pytest.mark.parametrize("bed", list(FAMILIES), indirect=True)


class FamilyBed:
    """The user's graph for a family: Load Diffusion Model, the prompt's conditioning (encoded by the tiny CLIP-L, or
    built directly), the family's empty latent, few steps at CFG 1."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.model = call_node("UNETLoader", unet_name=FAMILIES[family], weight_dtype="default")[0]
        if family in TEXT_WIDTH:
            self.pos, self.neg = (text_conditioning(text, TEXT_WIDTH[family]) for text in (PROMPT, ""))
        else:
            clip = call_node("CLIPLoader", clip_name=TINY_DIT_CLIP_L, type="stable_diffusion")[0]
            self.pos = call_node("CLIPTextEncode", text=PROMPT, clip=clip)[0]
            self.neg = call_node("CLIPTextEncode", text="", clip=clip)[0]
        if family == "flux2":
            self.pos = call_node("FluxGuidance", conditioning=self.pos, guidance=4.0)[0]
        node, self.channels, self.scale = LATENT[family]
        self.latent = call_node(node, width=SIZE, height=SIZE, batch_size=1)[0]

    def head(self, kind: str):
        return call_node("LoadReadoutHead", head_name=tiny_head_name(kind, family=self.family))[0]

    def sample(self, seed: int = 1, cfg: float = 1.0, guidance=None):
        inputs = dict(seed=seed, steps=STEPS, cfg=cfg, sampler_name="euler", scheduler="simple", positive=self.pos,
                      negative=self.neg, latent_image=self.latent, denoise=1.0)
        if guidance is None:
            return call_node("KSampler", model=self.model, **inputs)[0]["samples"]
        return call_node("ReadoutGuidedKSampler", model=self.model, guidance=guidance, **inputs, **ONE_PASS)

    def depth_target(self) -> tuple:
        """The depth head and a reachable target image: its readout of another seed's sample (made once)."""
        if not hasattr(self, "_depth_target"):
            head = self.head("depth")
            target_map = self.readout(self.sample(seed=7), head)
            readouts = pack_module("readout.heads.readouts")
            self._depth_target = head, readouts.spatial_to_unit(target_map, head.config.control_range).movedim(1, -1)
        return self._depth_target

    def readout(self, samples: torch.Tensor, head) -> torch.Tensor:
        with torch.inference_mode():
            return pack_module("readout.heads.extract").latent_readout(self.model, head, samples, self.neg, 0, 0)


@pytest.fixture(scope="module")
def bed(request) -> FamilyBed:
    if comfyui_version() < DETECTED_SINCE:
        pytest.skip(f"this ComfyUI's detection does not size the tiny {request.param} model")
    return FamilyBed(request.param)


@family
def test_loaders_give_a_model_of_the_family_with_its_block_widths(bed):
    assert_model_is_the_family_with_its_widths(bed.model, bed.family)


@family
def test_features_are_the_generated_image_tokens_on_the_patch_grid(bed):
    """A change in one corner of the latent changes the features most at that corner's patch in every readout block:
    the generated image's tokens (not the text's, wherever the family puts them) laid out row by row."""
    assert_features_are_image_tokens_on_the_grid(bed.model, bed.neg, bed.channels, PATCH[bed.family],
                                                 readout_dims(bed.family)[0])


def test_z_image_token_padding_leaves_the_features_on_the_image_tokens():
    """Z-Image pads its caption and image tokens to a multiple of 32 (ComfyUI's detection switches that on only at
    Z-Image's 3840 width): on the tiny NextDiT with that padding on, the 4x6 grid's 24 image tokens have 8 pads after
    them, and the features are still the image tokens on the grid."""
    if comfyui_version() < DETECTED_SINCE:
        pytest.skip("this ComfyUI's detection does not size the tiny NextDiT")
    model = call_node("UNETLoader", unet_name=TINY_LUMINA2, weight_dtype="default")[0]
    nextdit = model.model.diffusion_model
    like = nextdit.x_embedder.weight
    pads = torch.randn(2, 1, nextdit.dim, generator=torch.Generator().manual_seed(5)).to(like)
    nextdit.pad_tokens_multiple = 32
    nextdit.x_pad_token, nextdit.cap_pad_token = (torch.nn.Parameter(pad) for pad in pads)
    assert_features_are_image_tokens_on_the_grid(model, text_conditioning("", TEXT_WIDTH["lumina2"]), 16,
                                                 PATCH["lumina2"], readout_dims("lumina2")[0])


@family
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_spatial_guidance_lowers_the_head_loss_in_few_steps(bed, cfg):
    head, unit = bed.depth_target()
    guidance = call_node("ReadoutTarget", head=head, weight=TINY_WEIGHT, start_percent=0.0, end_percent=1.0,
                         target_image=unit)[0]
    plain = bed.sample(seed=1, cfg=cfg)
    guided = bed.sample(seed=1, cfg=cfg, guidance=guidance)[0]["samples"]
    loss = guidance[0].loss
    assert torch.isfinite(guided).all()
    assert float(loss(bed.readout(guided, head)).sum()) < 0.9 * float(loss(bed.readout(plain, head)).sum())


@pytest.mark.parametrize("bed", ["flux2"], indirect=True)
def test_a_mask_of_another_aspect_is_refused_with_the_latent_in_the_familys_pixels(bed):
    """Flux.2's VAE makes a latent cell of 16 px: the 64 px latent is 4x4 cells, and the message says 64x64 px."""
    head, unit = bed.depth_target()
    mask = call_node("SolidMask", value=1.0, width=64, height=32)[0]
    guidance = call_node("ReadoutTarget", head=head, weight=TINY_WEIGHT, start_percent=0.0, end_percent=1.0,
                         target_image=unit, mask=mask)[0]
    with pytest.raises(ValueError, match=r"mask: it is 64x32, another aspect ratio than the 64x64 px latent"):
        bed.sample(guidance=guidance)


@family
def test_drag_lowers_the_drag_loss_in_few_steps(bed):
    assert_drag_lowers_the_drag_loss(bed, SIZE)


@pytest.mark.parametrize("bed", ["qwen_image"], indirect=True)
def test_a_drag_on_qwen_image_edit_reads_the_generated_image_and_lowers_the_drag_loss(bed):
    """Qwen-Image-Edit's conditioning carries the reference image's latent (Set Reference Latent, as its encoders
    set it): its tokens follow the generated image's, the features are still the generated image's on the patch grid,
    and a drag lowers the drag loss."""
    reference = {"samples": torch.randn(1, bed.channels, 1, SIZE // bed.scale, SIZE // bed.scale,
                                        generator=torch.Generator().manual_seed(5))}
    plain = (bed.pos, bed.neg)
    bed.pos, bed.neg = (call_node("ReferenceLatent", conditioning=c, latent=reference)[0] for c in plain)
    try:
        latent = torch.randn(1, bed.channels, 1, 8, 8, generator=torch.Generator().manual_seed(6))
        evaluation = pack_module("readout.backbones.evaluation")
        with_reference, without = (evaluation.hooked_evaluation(bed.model, latent, torch.tensor([0.5]),
                                                                torch.zeros_like(latent), c).features[0]
                                   for c in (bed.neg, plain[1]))
        assert with_reference.shape == without.shape and not torch.allclose(with_reference, without)
        assert_features_are_image_tokens_on_the_grid(bed.model, bed.neg, bed.channels, PATCH[bed.family],
                                                     readout_dims(bed.family)[0])
        assert_drag_lowers_the_drag_loss(bed, SIZE)
    finally:
        bed.pos, bed.neg = plain


@pytest.mark.parametrize("bed", ["lumina2"], indirect=True)
def test_auto_recurrence_guides_z_image_once_a_step(bed):
    """On the learned Z-Image a second pass lowered the effect at 8 and 4 steps: auto (the default) samples a short
    Z-Image run as recurrence 1 does, bit for bit."""
    head, unit = bed.depth_target()
    guidance = call_node("ReadoutTarget", head=head, weight=TINY_WEIGHT, start_percent=0.0, end_percent=1.0,
                         target_image=unit)[0]
    inputs = dict(model=bed.model, seed=1, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple",
                  positive=bed.pos, negative=bed.neg, latent_image=bed.latent, denoise=1.0, guidance=guidance)
    auto, one = (call_node("ReadoutGuidedKSampler", **inputs, **extra)[0]["samples"] for extra in ({}, ONE_PASS))
    assert torch.equal(auto, one)


def tokenizer_only_clip(tokenizer_class):
    """A CLIP of a family whose text encoder has no tiny stand-in: its tokenizer only (ComfyUI ships the files; no
    weights are needed to tokenize)."""
    import comfy.sd

    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer, clip.tokenizer_options = tokenizer_class(), {}
    return clip


def test_z_image_words_sit_at_their_qwen3_token_positions():
    """A Z-Image CLIP (CLIPLoader type lumina2 with Qwen3 4B: ComfyUI's Z-Image tokenizer) gives words their positions
    in the chat template Qwen3 encodes, which index Z-Image's caption; a word after a space is found as byte-level BPE
    spells it there."""
    if comfyui_version() < DETECTED_SINCE:
        pytest.skip("the Z-Image tests run on ComfyUI 0.33")
    from comfy.text_encoders.z_image import ZImageTokenizer

    clip = tokenizer_only_clip(ZImageTokenizer)
    prompt_tokens = pack_module("readout.targets.prompt_tokens")
    prompt = "a red cube on a wooden table"
    ids = [int(token[0]) for token in clip.tokenize(prompt)["qwen3_4b"][0]]
    qwen = clip.tokenizer.qwen3_4b.tokenizer
    assert prompt_tokens.clip_family(clip) == "lumina2"
    for words, spelled in (("a", "a"), ("red cube", " red cube"), ("wooden table", " wooden table")):
        positions = prompt_tokens.word_token_positions(clip, prompt, words)
        assert qwen.decode([ids[p] for p in positions]) == spelled
    assert prompt_tokens.word_token_positions(clip, prompt, "a") == (3,), "after <|im_start|>, user and a newline"
    target = call_node("SelfGuidanceTarget", clip=clip, prompt=prompt, words="cube", edit="move_to", dx=0.0, dy=0.0,
                       x=0.2, y=0.8, size_factor=1.0, weight=1.0, start_percent=0.0, end_percent=1.0)[0][-1]
    assert (target.family, target.tokens) == ("lumina2", (5,))


def test_qwen_image_words_count_from_the_end_of_the_conditioning():
    """A Qwen-Image CLIP (CLIPLoader type qwen_image) gives words positions counted from the conditioning's end: the
    text encoder keeps its template from the user's text on, and Qwen-Image-Edit's encoders put the reference images'
    tokens before that text; the template's tail after the prompt is the same in both."""
    if comfyui_version() < DETECTED_SINCE:
        pytest.skip("the Qwen-Image tests run on ComfyUI 0.33")
    from comfy.text_encoders.qwen_image import QwenImageTokenizer

    clip = tokenizer_only_clip(QwenImageTokenizer)
    prompt_tokens = pack_module("readout.targets.prompt_tokens")
    prompt = "a red cube on a wooden table"
    qwen = clip.tokenizer.qwen25_7b.tokenizer
    plain = [int(token[0]) for token in clip.tokenize(prompt)["qwen25_7b"][0]]
    template = clip.tokenizer.llama_template_images
    edit = [int(token[0]) for token in clip.tokenize(template.format(prompt))["qwen25_7b"][0]]
    assert prompt_tokens.clip_family(clip) == "qwen_image"
    for words, spelled in (("a", "a"), ("red cube", " red cube"), ("wooden table", " wooden table")):
        positions = prompt_tokens.word_token_positions(clip, prompt, words)
        assert all(p < 0 for p in positions)
        assert qwen.decode([plain[p] for p in positions]) == qwen.decode([edit[p] for p in positions]) == spelled
    first = len(plain) + prompt_tokens.word_token_positions(clip, prompt, "a")[0]
    assert qwen.decode(plain[first - 3:first]) == "<|im_start|>user\n", "the conditioning starts at the user's text"
    assert qwen.decode(plain[first + 7:]) == "<|im_end|>\n<|im_start|>assistant\n"


WORD_TOKENIZERS = {"qwen_image": ("qwen_image", "QwenImageTokenizer"), "krea2": ("krea2", "Krea2Tokenizer"),
                   "flux2": ("flux", "KleinTokenizer")}
"""The tokenizer of each family's CLIP whose files ComfyUI ships (comfy.text_encoders module, class): Flux.2 dev's
Mistral 3 tokenizer comes inside its text encoder's file, so Flux.2 is tested with Klein's Qwen3 4B."""


def word_prompt(bed: FamilyBed) -> tuple:
    """The CLIP that finds PROMPT's words for the bed's model, and PROMPT's conditioning: the NextDiT reads the tiny
    CLIP-L's encoding; the others the family's tokenizer's positions, counted from the conditioning's end, in
    conditioning from the prompt's first word on (Qwen-Image's and Krea 2's text encoders keep that; Flux.2 pads it on
    the left to 512 tokens)."""
    import importlib

    if bed.family == "lumina2":
        clip = call_node("CLIPLoader", clip_name=TINY_DIT_CLIP_L, type="stable_diffusion")[0]
        return clip, call_node("CLIPTextEncode", text=PROMPT, clip=clip)[0]
    module, name = WORD_TOKENIZERS[bed.family]
    clip = tokenizer_only_clip(getattr(importlib.import_module(f"comfy.text_encoders.{module}"), name))
    length = -pack_module("readout.targets.prompt_tokens").word_token_positions(clip, PROMPT, "a")[0]
    positive = text_conditioning(PROMPT, TEXT_WIDTH.get(bed.family, CLIP_L_WIDTH), tokens=length)
    if bed.family == "flux2":
        positive = call_node("FluxGuidance", conditioning=positive, guidance=4.0)[0]
    return clip, positive


def word_sampler(bed: FamilyBed, positive, model=None):
    """`sample(guidance=None)`: seed 5 of the bed's model (or `model`) with this prompt at CFG 1, guided (one pass)
    when given targets."""
    model = model or bed.model
    inputs = dict(seed=5, steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", positive=positive,
                  negative=bed.neg, latent_image=bed.latent, denoise=1.0)

    def sample(guidance=None):
        if guidance is None:
            return call_node("KSampler", model=model, **inputs)[0]["samples"]
        return call_node("ReadoutGuidedKSampler", model=model, guidance=guidance, **inputs, **ONE_PASS)[0]["samples"]
    return sample


@family
def test_self_guidance_moves_a_word(bed):
    """Each family's joint attention of the generated image's queries over the prompt's keys gives Self-Guidance its
    word maps, at CFG 1 in few steps: Z-Image's NextDiT with the CLIP whose tokens it reads, Qwen-Image, Flux.2 and
    Krea 2 with their own tokenizers' positions (word_prompt)."""
    clip, positive = word_prompt(bed)
    assert_self_guidance_moves_the_word(bed.model, clip, positive, word_sampler(bed, positive), SIZE)


@pytest.mark.parametrize("bed", ["flux2", "krea2"], indirect=True)
def test_guidance_through_comfyuis_gpu_paths_gives_the_plain_result(bed, monkeypatch):
    """A depth target and Self-Guidance chained on a DiT through ComfyUI's GPU memory paths, emulated
    (tests/gpu_emulation.py): every layer's weights a cast copy cached under inference mode (dynamic VRAM, made by an
    unguided run first), then also an attention kernel whose backward raises (flash attention); the guided latent is
    the plain CPU path's. On Flux.2 (Flux's blocks and attention) and Krea 2 (forward hooks, its own attention
    module): the tiny Z-Image and Qwen-Image are 2304 and 3072 wide, which this emulation takes minutes to copy."""
    from gpu_emulation import attention_kernel, cached_under_inference_mode, cast_every_layer, use_attention_kernel

    clip, positive = word_prompt(bed)
    head, target_image = bed.depth_target()
    depth = call_node("ReadoutTarget", head=head, weight=TINY_WEIGHT, start_percent=0.0, end_percent=1.0,
                      target_image=target_image)[0]
    targets = call_node("SelfGuidanceTarget", clip=clip, prompt=PROMPT, words="cube", edit="move_to", dx=0.0, dy=0.0,
                        x=0.2, y=0.8, size_factor=1.0, weight=1.0, start_percent=0.0, end_percent=1.0, guidance=depth)[0]
    plain = word_sampler(bed, positive)(targets)
    model = call_node("UNETLoader", unet_name=FAMILIES[bed.family], weight_dtype="default")[0]
    cast_every_layer(monkeypatch, model, cached_under_inference_mode)
    sample = word_sampler(bed, positive, model)
    unguided, guided = sample(), sample(targets)
    assert any(getattr(m, "_emulated_cast", None) for m in model.model.diffusion_model.modules()), "no layer was cast"
    assert float((guided - unguided).abs().mean()) > 1e-3, "guidance did not move the latent"
    torch.testing.assert_close(guided, plain, rtol=1e-4, atol=1e-4)
    kernel, calls = attention_kernel("no_backward"), []

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)
    use_attention_kernel(monkeypatch, counted)
    torch.testing.assert_close(sample(targets), plain, rtol=1e-4, atol=1e-4)
    assert calls, "the model never called the kernel without a backward"


@pytest.mark.parametrize("bed", list(WORD_TOKENIZERS), indirect=True)
def test_self_guidance_refuses_the_words_of_another_clip(bed):
    """An SD1.5 CLIP's word positions are refused on these families by naming the clip input (on Flux.2 too, whose
    tiny model reads CLIP-L's width: the left padding would move them)."""
    clip = call_node("CLIPLoader", clip_name=TINY_DIT_CLIP_L, type="stable_diffusion")[0]
    target = call_node("SelfGuidanceTarget", clip=clip, prompt=PROMPT, words="cube", edit="move_to", dx=0.0, dy=0.0,
                       x=0.2, y=0.8, size_factor=1.0, weight=1.0, start_percent=0.0, end_percent=1.0)[0]
    with pytest.raises(ValueError, match=f"clip: the words 'cube' were tokenized with an sd15 CLIP but the model is "
                                         f"{bed.family}"):
        target[0].check_model(bed.model, "cond")


@pytest.mark.parametrize("bed", ["krea2"], indirect=True)
def test_a_family_without_self_guidance_is_refused_by_name(bed, monkeypatch):
    monkeypatch.setattr(registry.FAMILIES["krea2"], "self_guidance", False)
    clip = tokenizer_only_clip(pytest.importorskip("comfy.text_encoders.krea2").Krea2Tokenizer)
    target = call_node("SelfGuidanceTarget", clip=clip, prompt=PROMPT, words="cube", edit="move_to", dx=0.0, dy=0.0,
                       x=0.2, y=0.8, size_factor=1.0, weight=1.0, start_percent=0.0, end_percent=1.0)[0]
    with pytest.raises(ValueError, match="model: self-guidance .* on Krea 2 it is not supported yet"):
        target[0].check_model(bed.model, "cond")


@pytest.mark.parametrize("bed", ["flux2", "lumina2"], indirect=True)
def test_node_trains_a_head_of_the_family(bed, model_folders):
    """Train Readout Head on the family's model, its VAE (Flux.2's TAEF2, the 16-channel one for NextDiT) and the CLIP
    that encodes its prompt. (Qwen-Image and Krea 2 read text encoders no tiny CLIP can stand in for.)"""
    vae = call_node("VAELoader", vae_name=TAEF2 if bed.family == "flux2" else TINY_DIT_VAE)[0]
    clip = call_node("CLIPLoader", clip_name=TINY_DIT_CLIP_L, type="stable_diffusion")[0]
    images = torch.rand(4, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    dataset = call_node("ReadoutSpatialDataset", images=images, labels=(images > 0.5).float(),
                        dataset_name=f"{bed.family}_edges", kind="edge")[0]
    out = node_output("TrainReadoutHead", model=bed.model, vae=vae, clip=clip, dataset=dataset,
                      head_name=f"{bed.family}_edge", steps=2, kind="edge", learning_rate=1e-3, batch_size=2,
                      resolution=SIZE, seed=0, projection_dim=128, validation_fraction=0.0)
    head = out["result"][0]
    assert head.config.family == bed.family and list(head.config.dims) == readout_dims(bed.family)
    readout = bed.readout(bed.sample(seed=2), head)
    assert readout.shape[1] == 3 and bool(torch.isfinite(readout).all())
