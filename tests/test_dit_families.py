"""The DiT families (Flux, SD3/SD3.5) on their tiny models, loaded as users load them (UNETLoader, CLIPLoader,
VAELoader): detection, token-grid features, heads, guidance at cfg 1 (Flux) and with CFG (SD3), drag, training."""
from __future__ import annotations


import pytest
import torch

from helpers import (ONE_PASS, assert_drag_lowers_the_drag_loss, assert_features_are_image_tokens_on_the_grid,
                     assert_self_guidance_moves_the_word,
                     assert_model_is_the_family_with_its_widths, call_node, node_output, pack_module, tiny_head_name)
from tiny.dit import TINY_DIT_CLIP_L, TINY_DIT_VAE, TINY_FLUX, TINY_SD3
from tiny.models import embedding_width, readout_dims

registry = pack_module("readout.backbones.registry")
evaluation = pack_module("readout.backbones.evaluation")
HeadModelMismatch = pack_module("readout.heads.files").HeadModelMismatch

LOADERS = {"flux": (TINY_FLUX, "stable_diffusion"), "sd3": (TINY_SD3, "sd3")}
"""The tiny Flux reads CLIP-L (768-d text tokens); the tiny SD3 reads CLIP-L loaded as type sd3."""
CFG = {"flux": 1.0, "sd3": 4.0}
STEPS = {"flux": 6, "sd3": 8}
SIZE = 64
dit_family = pytest.mark.parametrize("dit", ["flux", "sd3"], indirect=True)


class DiTBed:
    """The user's DiT graph: Load Diffusion Model, Load CLIP, Load VAE, the prompt (FluxGuidance on Flux), an empty
    SD3/Flux latent."""

    def __init__(self, family: str) -> None:
        self.family = family
        unet, clip_type = LOADERS[family]
        self.model = call_node("UNETLoader", unet_name=unet, weight_dtype="default")[0]
        self.clip = call_node("CLIPLoader", clip_name=TINY_DIT_CLIP_L, type=clip_type)[0]
        self.vae = call_node("VAELoader", vae_name=TINY_DIT_VAE)[0]
        self.pos = call_node("CLIPTextEncode", text="a red cube on a table", clip=self.clip)[0]
        self.neg = call_node("CLIPTextEncode", text="", clip=self.clip)[0]
        if family == "flux":
            self.pos = call_node("FluxGuidance", conditioning=self.pos, guidance=3.5)[0]
        self.latent = call_node("EmptySD3LatentImage", width=SIZE, height=SIZE, batch_size=1)[0]

    def head(self, kind: str):
        return call_node("LoadReadoutHead", head_name=tiny_head_name(kind, family=self.family))[0]

    def sample(self, model=None, seed: int = 1, guidance=None) -> torch.Tensor:
        inputs = dict(seed=seed, steps=STEPS[self.family], cfg=CFG[self.family], sampler_name="euler",
                      scheduler="simple", positive=self.pos, negative=self.neg, latent_image=self.latent, denoise=1.0)
        if guidance is None:
            return call_node("KSampler", model=model or self.model, **inputs)[0]["samples"]
        return call_node("ReadoutGuidedKSampler", model=model or self.model, guidance=guidance, **inputs, **ONE_PASS)

    def readout(self, samples: torch.Tensor, head) -> torch.Tensor:
        with torch.inference_mode():
            return pack_module("readout.heads.extract").latent_readout(self.model, head, samples, self.neg, 0, 0)


@pytest.fixture(scope="module")
def dit(request) -> DiTBed:
    return DiTBed(request.param)


@pytest.mark.every_comfyui
@dit_family
def test_loaders_give_a_model_of_the_family_with_its_block_widths(dit):
    assert_model_is_the_family_with_its_widths(dit.model, dit.family)


@pytest.mark.every_comfyui
@dit_family
def test_features_are_the_image_tokens_on_the_patch_grid(dit):
    """A change in one corner of the latent changes the features most at that corner's patch, in every readout
    block: the image tokens (after Flux's text tokens in single-stream blocks) laid out row by row."""
    assert_features_are_image_tokens_on_the_grid(dit.model, dit.neg, 16, 2, readout_dims(dit.family)[0])


@dit_family
def test_heads_of_other_families_are_refused_by_name(dit):
    other = "sd15" if dit.family == "flux" else "flux"
    head = call_node("LoadReadoutHead", head_name=tiny_head_name("depth", family=other))[0]
    with pytest.raises(HeadModelMismatch, match=f"{registry.FAMILIES[dit.family].label}"):
        call_node("ReadoutTarget", head=head, weight=1.0, start_percent=0.0, end_percent=1.0,
                  target_image=torch.zeros(1, SIZE, SIZE, 3))[0][0].check_model(dit.model, "cond")


@pytest.mark.every_comfyui
@dit_family
def test_spatial_guidance_lowers_the_head_loss(dit):
    head = dit.head("depth")
    target_map = dit.readout(dit.sample(seed=7), head)
    unit = pack_module("readout.heads.readouts").spatial_to_unit(target_map, head.config.control_range).movedim(1, -1)
    guidance = call_node("ReadoutTarget", head=head, weight=1.0, start_percent=0.0, end_percent=1.0,
                         target_image=unit)[0]
    plain = dit.sample(seed=1)
    guided = dit.sample(seed=1, guidance=guidance)[0]["samples"]
    loss = guidance[0].loss
    assert torch.isfinite(guided).all()
    assert float(loss(dit.readout(guided, head)).sum()) < 0.9 * float(loss(dit.readout(plain, head)).sum())


@pytest.mark.parametrize("dit", ["flux"], indirect=True)
def test_flux_guides_alike_with_and_without_gradient_checkpointing(dit):
    """Flux's blocks add into their inputs in place: without checkpointing the grad pass keeps copies of what they save
    for the backward, and the guided image is the one checkpointing gives."""
    head = dit.head("depth")
    guidance = call_node("ReadoutTarget", head=head, weight=1.0, start_percent=0.0, end_percent=1.0,
                         target_image=torch.full((1, SIZE, SIZE, 3), 0.8))[0]
    inputs = dict(seed=2, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", positive=dit.pos,
                  negative=dit.neg, latent_image=dit.latent, denoise=1.0, guidance=guidance)
    runs = [call_node("ReadoutGuidedKSampler", model=dit.model, gradient_checkpointing=flag, **inputs,
                      **ONE_PASS)[0]["samples"]
            for flag in (True, False)]
    plain = call_node("KSampler", model=dit.model, **{k: v for k, v in inputs.items() if k != "guidance"})[0]
    moved = (runs[0] - plain["samples"]).abs().mean()
    assert float(moved) > 1e-3
    # the first guided step is the gradient's sign: where it is ~0 rounding may flip it, so compare in the mean
    assert float((runs[1] - runs[0]).abs().mean()) < 0.05 * float(moved)


def test_flux_weight_is_scaled_to_the_flow_parameterization():
    """One weight, one strength: the flow families multiply it by FLOW_WEIGHT / OFFICIAL_WEIGHT, the UNets by 1."""
    dit = pack_module("readout.backbones.dit")
    rule = pack_module("readout.guidance.run")
    assert registry.FAMILIES["flux"].weight_scale == registry.FAMILIES["sd3"].weight_scale
    assert registry.FAMILIES["flux"].weight_scale * rule.OFFICIAL_WEIGHT == pytest.approx(dit.FLOW_WEIGHT)
    assert registry.FAMILIES["sd15"].weight_scale == 1.0
    assert registry.FAMILIES["sd3"].vp_scale(0.5) == 1.0 and registry.FAMILIES["sd15"].vp_scale(1.0) > 1.4


@dit_family
def test_drag_lowers_the_drag_loss(dit):
    assert_drag_lowers_the_drag_loss(dit, SIZE)


@dit_family
def test_self_guidance_moves_a_word_by_its_joint_attention(dit):
    """Through the node with the CLIP that encodes the model's prompt (the tiny Flux's text input is CLIP-L's 768-d
    tokens, loaded as stable_diffusion)."""
    def sample(guidance=None):
        return dit.sample(seed=5) if guidance is None else dit.sample(seed=5, guidance=guidance)[0]["samples"]
    assert_self_guidance_moves_the_word(dit.model, dit.clip, dit.pos, sample, SIZE)


def test_flux_clip_words_sit_at_their_t5_token_positions():
    """A Flux CLIP (DualCLIPLoader type flux: ComfyUI's Flux tokenizer; no weights needed to tokenize) gives words
    their T5 positions, which index Flux's context (the T5 sequence; no start token)."""
    import comfy.sd
    from comfy.text_encoders.flux import FluxTokenizer

    clip = comfy.sd.CLIP(no_init=True)
    clip.tokenizer, clip.tokenizer_options = FluxTokenizer(), {}
    prompt_tokens = pack_module("readout.targets.prompt_tokens")
    prompt = "a red cube on a wooden table"
    t5 = clip.tokenizer.t5xxl.tokenizer
    ids, wanted = t5(prompt)["input_ids"], t5("wooden table", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(ids)) if ids[i:i + len(wanted)] == wanted)
    assert prompt_tokens.clip_family(clip) == "flux"
    assert prompt_tokens.word_token_positions(clip, prompt, "wooden table") == tuple(range(start, start + len(wanted)))
    assert prompt_tokens.word_token_positions(clip, prompt, "a")[0] == 0, "T5 puts no start token first"
    target = call_node("SelfGuidanceTarget", clip=clip, prompt=prompt, words="wooden table", edit="move_to", dx=0.0,
                       dy=0.0, x=0.2, y=0.8, size_factor=1.0, weight=1.0, start_percent=0.0, end_percent=1.0)[0][-1]
    assert (target.family, target.tokens) == ("flux", tuple(range(start, start + len(wanted))))


@dit_family
def test_node_and_command_line_train_a_head_of_the_family_from_the_dit_loaders(dit, tmp_path, model_folders,
                                                                             comfyui_dir):
    import folder_paths

    images = torch.rand(4, SIZE, SIZE, 3, generator=torch.Generator().manual_seed(0))
    labels = (images > 0.5).float()
    dataset = call_node("ReadoutSpatialDataset", images=images, labels=labels, dataset_name=f"{dit.family}_edges",
                        kind="edge")[0]
    out = node_output("TrainReadoutHead", model=dit.model, vae=dit.vae, clip=dit.clip, dataset=dataset,
                      head_name=f"{dit.family}_edge", steps=2, kind="edge", learning_rate=1e-3, batch_size=2,
                      resolution=SIZE, seed=0, projection_dim=128, validation_fraction=0.0)
    head = out["result"][0]
    assert head.config.family == dit.family and list(head.config.dims) == readout_dims(dit.family)
    assert head.config.emb_dim == embedding_width(dit.family)
    readout = dit.readout(dit.latent["samples"], head)
    assert readout.shape[1] == 3 and bool(torch.isfinite(readout).all())

    output = tmp_path / "from_cli.safetensors"
    unet, clip_type = LOADERS[dit.family]
    files = ["--diffusion-model", folder_paths.get_full_path("diffusion_models", unet),
             "--text-encoder", folder_paths.get_full_path("text_encoders", TINY_DIT_CLIP_L), "--clip-type", clip_type,
             "--vae", folder_paths.get_full_path("vae", TINY_DIT_VAE)]
    main = pack_module("readout.train.__main__").main
    assert main(["--comfyui", comfyui_dir, *files, "--kind", "edge", "--dataset", dataset.path, "--output",
                 str(output), "--steps", "2", "--batch-size", "2", "--lr", "1e-3", "--resolution", str(SIZE),
                 "--projection-dim", "128", "--val-fraction", "0", "--checkpoint-every", "0"]) == 0
    config, cli_weights = pack_module("readout.heads.files").load_head_file(str(output))
    assert config == head.config, "the command line, given the three files, trains the node's head"
    for name, tensor in head.patcher.model.state_dict().items():
        torch.testing.assert_close(cli_weights[name], tensor, rtol=1e-4, atol=1e-5)
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x.safetensors", *files, "--kind", "edge", "--dataset", dataset.path, "--output",
              str(output)])
    wrong_type = [*files[:-4], "--clip-type", "no_such_type", *files[-2:]]
    assert main(["--comfyui", comfyui_dir, *wrong_type, "--kind", "edge", "--dataset", dataset.path, "--output",
                 str(output)]) == 2, "an unknown --clip-type is a message, not a traceback"


def test_token_features_survive_a_later_blocks_in_place_add():
    """Flux's single-stream blocks add into their input in place; the features read from the block before must not
    alias it, or the head's backward (without gradient checkpointing) fails on a modified tensor."""
    dit = pack_module("readout.backbones.dit")
    layout = dit.TokenLayout()
    layout.grid, layout.text_tokens = (2, 3), 4
    leaf = torch.randn(1, 10, 8, requires_grad=True)
    stream = leaf * 1.0
    features = layout.image_grid(stream, dit.normalize_tokens, start=layout.text_tokens)
    assert features.shape == (1, 8, 2, 3)
    stream.add_(1.0)
    (features * torch.randn(features.shape)).sum().backward()
    assert leaf.grad is not None and leaf.grad[0, :4].abs().max() == 0 and leaf.grad[0, 4:].abs().max() > 0
