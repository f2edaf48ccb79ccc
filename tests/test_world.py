"""The learned world: scenes with exact ground truth, a detector that reads them, the model's exact assembly into
ComfyUI's formats, its training code, and guidance measured on its decoded pixels (CI-sized)."""
from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch
from scipy import ndimage

from world import paths
from world.autoencoder import build_taesd, encode_patches, fit_patch_encoder, psnr, scene_batch, train_decoder
from world.detector import caption_objects, detect, foreground, iou, largest
from world.scenes import COLOURS, SHAPES, all_captions, moved, random_scene
from world.unet import UNET_CONFIG, build_unet, train_unet, wide_config, widen_state_dict


def test_captions_follow_the_two_forms():
    for seed in range(50):
        scene = random_scene(seed)
        words = scene.caption.split(" ")
        if len(scene.shapes) == 1:
            assert words[0] == "a" and words[1] in COLOURS and words[2] in SHAPES and len(words) == 3
        else:
            assert words[3:5] == ["and", "a"] and len(words) == 7 and words[1] != words[5]
        assert scene.caption in all_captions()


def test_ground_truth_agrees_with_the_rendered_image():
    for seed in range(30):
        scene = random_scene(seed, num_objects=2)
        image, depth, edges, labels = scene.image(), scene.depth()[..., 0], scene.edges()[..., 0], scene.labels()
        for i, (shape, mask) in enumerate(zip(scene.shapes, scene.visible_masks())):
            assert np.allclose(image[mask], COLOURS[shape.colour])
            assert np.allclose(depth[mask], shape.depth)
            ys, xs = np.nonzero(labels == i + 1)
            assert scene.centroids()[i] == pytest.approx((xs.mean() + 0.5, ys.mean() + 0.5))
        assert scene.shapes[1].depth >= scene.shapes[0].depth
        assert depth[labels == 0].max() < depth[labels > 0].min()
        inside = labels > 0
        boundary = inside ^ np.roll(inside, 1, 0) | inside ^ np.roll(inside, 1, 1)
        near = ndimage.binary_dilation(inside, iterations=2)
        assert edges[boundary].mean() == 1.0 and edges[~near].max() == 0 and edges[near].mean() > 0.05


def test_detector_reads_rendered_scenes():
    hits = centroid_errors = 0
    for seed in range(60):
        scene = random_scene(seed)
        blobs = detect(scene.image())
        hits += sorted(b.colour for b in blobs) == sorted(c for c, _ in caption_objects(scene.caption))
        for shape, (cx, cy) in zip(scene.shapes, scene.centroids()):
            blob = largest(blobs, shape.colour)
            centroid_errors += abs(blob.centroid[0] - cx) + abs(blob.centroid[1] - cy) > 1.0
    assert hits == 60 and centroid_errors == 0
    scene = random_scene(3, num_objects=1)
    truth = scene.visible_masks()[0]
    assert iou(foreground(detect(scene.image()), truth.shape), truth) == 1.0
    shifted = moved(scene, 0, 30, 0)
    assert iou(foreground(detect(shifted.image()), truth.shape), truth) < 0.5


def test_patch_encoder_is_written_exactly_into_taesd():
    weight, mean = fit_patch_encoder(range(40))
    taesd = build_taesd(weight, mean)
    images = scene_batch(range(500, 503))
    with torch.no_grad():
        assert torch.allclose(taesd.taesd_encoder(images), encode_patches(images, weight, mean), atol=1e-4)
    codes = encode_patches(scene_batch(range(600, 640)), weight, mean)
    assert codes.std(dim=(0, 2, 3)).sub(1).abs().max() < 0.3


def test_widened_unet_computes_the_narrow_one():
    narrow = build_unet(UNET_CONFIG, seed=0)
    with torch.no_grad():
        for param in narrow.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    wide = build_unet(wide_config())
    wide.load_state_dict(widen_state_dict(narrow.state_dict()))
    x, t, context = torch.randn(2, 4, 16, 16), torch.tensor([20.0, 900.0]), torch.randn(2, 77, 768)
    with torch.no_grad():
        expected = narrow(x, timesteps=t, context=context)
        assert expected.abs().max() > 0.1
        assert torch.allclose(wide(x, timesteps=t, context=context), expected, atol=1e-4)


def test_training_code_lowers_its_losses():
    weight, mean = fit_patch_encoder(range(20))
    _, decoder_losses = train_decoder(weight, mean, steps=30, seed=5, batch=4, crop=32, log_every=0)
    assert np.mean(decoder_losses[-5:]) < 0.6 * np.mean(decoder_losses[:5])
    contexts = torch.randn(7, 77, 768)

    def batch(step: int):
        seeds = range(step * 8, step * 8 + 8)
        return encode_patches(scene_batch(seeds), weight, mean), contexts[torch.tensor([s % 6 for s in seeds])]

    _, unet_losses = train_unet(batch, contexts[6], steps=30, seed=5, warmup=5, log_every=0)
    assert np.mean(unet_losses[-8:]) < 0.8 * np.mean(unet_losses[:4])


def test_world_cli_trains_and_its_weights_assemble_into_a_checkpoint(tmp_path):
    import json
    import subprocess
    import sys

    from safetensors.torch import load_file

    from world.assemble import checkpoint_state_dict

    subprocess.run([sys.executable, "-m", "world.train", "--unet-steps", "2", "--unet-batch", "4", "--decoder-steps", "1",
                    "--out", str(tmp_path)], cwd=paths.REPO, check=True, capture_output=True)
    log = json.loads((tmp_path / "training_log.json").read_text())
    assert log["args"]["unet_steps"] == 2 and log["decoder_loss_first"] is not None
    narrow = load_file(str(tmp_path / paths.UNET_FILE))
    assert narrow["input_blocks.0.0.weight"].shape == (64, 4, 3, 3)
    sd = checkpoint_state_dict(str(tmp_path))
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape == (320, 4, 3, 3)
    assert "first_stage_model.taesd_decoder.1.weight" in sd and "cond_stage_model.transformer.text_model.final_layer_norm.weight" in sd


@functools.lru_cache(maxsize=1)
def _world():
    """The world checkpoint and heads, loaded once for the module through the loader nodes."""
    from world.experiments import World

    return World.load()


@pytest.mark.every_comfyui
def test_world_checkpoint_loads_as_sd15_with_its_vae_and_own_word_tokens():
    from testbed.nodes import call_node

    world = _world()
    assert type(world.model.model.model_config).__name__ == "SD15"
    red, blue = (world.encode(t)[0][0] for t in ("a red circle", "a blue circle"))
    assert torch.equal(red[0, 3], blue[0, 3]) and not torch.allclose(red[0, 2], blue[0, 2])
    scene = random_scene(7)
    encoded = call_node("VAEEncode", pixels=torch.from_numpy(scene.image())[None], vae=world.vae)[0]
    decoded = world.decode(encoded)
    assert psnr(torch.from_numpy(decoded), torch.from_numpy(scene.image())) > 20
    for shape, (cx, cy) in zip(scene.shapes, scene.centroids()):
        blob = largest(detect(decoded), shape.colour)
        assert blob is not None and abs(blob.centroid[0] - cx) + abs(blob.centroid[1] - cy) < 3


def test_compressed_world_heads_read_exactly_what_the_trained_ones_read(tmp_path, model_folders):
    from testbed.nodes import call_node, pack_module
    from world.heads import compress_head_file, expand_head_file

    files = pack_module("readout.heads.files")
    architecture = pack_module("readout.heads.architecture")
    config = architecture.HeadConfig(kind="depth", family="sd15", dims=(640, 640, 320, 320), projection_dim=128,
                                     use_output_head=True, control_range=(-1.0, 1.0))
    with torch.inference_mode(False):
        torch.manual_seed(3)
        state = architecture.ReadoutHead(config).state_dict()
    heads_dir = str(model_folders / "readout_heads")
    original, restored = os.path.join(heads_dir, "rg_test_world_original.safetensors"), os.path.join(heads_dir, "rg_test_world_restored.safetensors")
    try:
        files.save_head_safetensors(original, config, state)
        compress_head_file(original, str(tmp_path / "narrow.safetensors"))
        expand_head_file(str(tmp_path / "narrow.safetensors"), restored)
        assert os.path.getsize(tmp_path / "narrow.safetensors") < 0.25 * os.path.getsize(original)
        world = _world()
        image = torch.from_numpy(random_scene(11).image())[None]
        reads = [call_node("ExtractReadout", model=world.model, vae=world.vae, head=call_node("LoadReadoutHead", head_name=os.path.basename(p))[0],
                      timestep=300, seed=0, image=image, clip=world.clip)[1].tensor for p in (original, restored)]
        assert reads[0].abs().mean() > 0.01
        assert torch.allclose(reads[0], reads[1], atol=2e-3)
    finally:
        for p in (original, restored):
            if os.path.exists(p):
                os.remove(p)


EFFECT_SEEDS = (0, 1, 2)
# Thresholds safely below bench/world_effects.py on these seeds (README, "Measured on a learned model"):
# spatial IoU gain, depth 0.14, 0.49, 0.49 (mean 0.37; 16 seeds: +0.36), edge 0.13, 0.16, 0.60 (mean 0.30; 8 seeds:
# +0.25); drag moved 1.28, -0.09, 0.97 (mean 0.72; 16 seeds: 0.84), of an inverted scene 1.01 on seed 0; appearance
# colour similarity gain 1.0 and 0.97 (seed 1 skipped); Self-Guidance move_to closed 0.72, 0.90, -0.01 (mean 0.54;
# 12 seeds: 0.57); prompted colours present in 92% of 64 samples.
QUALITY_FLOOR = 0.5
SPATIAL_IOU_GAIN = 0.2
DRAG_MOVED = 0.4
APPEARANCE_GAIN = 0.4
APPEARANCE_SEEDS = (0, 2)
"""Seed 1's unconditional reference shows no object (the experiment skips it after its guided run)."""
SELF_GUIDANCE_CLOSED = 0.25
FLUX_SPATIAL_IOU_GAIN = 0.2
"""The world's Flux, depth: IoU gains 0.12, 0.55, 0.54 on seeds 0-2 (mean 0.40; 16 seeds: +0.33)."""
FLUX_SELF_GUIDANCE_HALF_WAY = 2
"""The world's Flux, Self-Guidance move_to: closed -0.95, 0.89, 0.82 on seeds 0-2 (16 seeds: 0.33 +- 0.60, 9 at
least half way): seeds that get at least half way."""


def test_world_model_follows_its_prompts():
    """On the spatial tests' scenes and seeds: the unguided samples they compare with are sampled once, here (blue
    is missing from seed 2's two-object sample)."""
    from world.experiments import EVAL_SCENE_BASE, model_quality

    quality = model_quality(_world(), EFFECT_SEEDS, scene_base=EVAL_SCENE_BASE)
    assert quality["colours_present"] >= QUALITY_FLOOR


@pytest.mark.parametrize("kind", ["depth", "edge"])
def test_spatial_guidance_puts_objects_where_the_map_says(kind):
    from world.experiments import spatial

    records = [spatial(_world(), kind, seed) for seed in EFFECT_SEEDS]
    gain = np.mean([r["guided"] - r["unguided"] for r in records])
    assert gain >= SPATIAL_IOU_GAIN, records


def test_drag_moves_the_generated_object_along_the_drag():
    from world.experiments import drag_generated

    records = [r for r in (drag_generated(_world(), seed) for seed in EFFECT_SEEDS) if "skipped" not in r]
    assert len(records) >= 2 and np.mean([r["moved"] for r in records]) >= DRAG_MOVED, records


def test_drag_moves_an_inverted_scene_object_along_the_drag():
    from world.experiments import drag_real

    record = drag_real(_world(), 0)
    assert "skipped" not in record and record["moved"] >= DRAG_MOVED, record


def test_appearance_guidance_keeps_the_reference_colours_with_another_seed():
    from world.experiments import appearance

    records = [r for r in (appearance(_world(), seed) for seed in APPEARANCE_SEEDS) if "skipped" not in r]
    assert len(records) == 2 and np.mean([r["guided"] - r["unguided"] for r in records]) >= APPEARANCE_GAIN, records


def test_self_guidance_moves_the_word_object_toward_the_goal():
    from world.experiments import self_guidance

    records = [r for r in (self_guidance(_world(), seed, "move_to") for seed in EFFECT_SEEDS) if "skipped" not in r]
    assert len(records) >= 2 and np.mean([r["closed"] for r in records]) >= SELF_GUIDANCE_CLOSED, records


def test_factored_flux_weights_multiply_out_to_the_model_comfyui_loads():
    """The world's Flux trains with rank-24 weight products and is stored as the factors; the Flux file assembled
    from them computes what the factored model computes."""
    from world.distill import FACTORS, dense_state_dict, factorize
    from world.flux import RANK, build_flux

    factored = factorize(build_flux(0), RANK)
    with torch.no_grad():
        for param in factored.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    stored = {k: v.half() for k, v in factored.state_dict().items()}
    assert any(k.endswith(FACTORS[0]) for k in stored) and sum(v.numel() for v in stored.values()) < 600_000
    dense = build_flux()
    dense.load_state_dict({k: v.float() for k, v in dense_state_dict(stored).items()})
    factored.load_state_dict({k: v.float() for k, v in stored.items()})
    gen = torch.Generator().manual_seed(1)
    inputs = (torch.randn(2, 16, 8, 8, generator=gen), torch.tensor([0.3, 0.8]), torch.randn(2, 7, 768, generator=gen),
              torch.randn(2, 768, generator=gen))
    with torch.no_grad():
        want, got = factored(*inputs), dense(*inputs)
    assert want.abs().mean() > 0.01 and torch.allclose(want, got, atol=2e-2 * want.abs().max())


def train_briefly(module: str, tmp_path, stop_after: int) -> dict:
    """Run a world transformer's training command for a few steps of 2 scenes; its log."""
    import json
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", module, "--steps", "10", "--stop-after", str(stop_after), "--batch", "2",
                    "--snapshot-every", "0", "--threads", "1", "--out", str(tmp_path)],
                   cwd=paths.REPO, check=True, capture_output=True)
    log = json.loads((tmp_path / f"{module.split('.')[-1]}_training_log.json").read_text())
    assert log["step"] == stop_after and np.isfinite(log["loss_last"])
    return log


def test_world_flux_cli_trains_factored_weights_from_the_world_teacher(tmp_path):
    from safetensors import safe_open

    from world.distill import FACTORS

    train_briefly("world.flux", tmp_path, 3)
    with safe_open(str(tmp_path / paths.FLUX_WEIGHTS), framework="pt") as handle:
        assert handle.metadata()["steps"] == "3" and handle.metadata()["schedule_steps"] == "10"
        assert any(k.endswith(FACTORS[1]) for k in handle.keys())


@functools.lru_cache(maxsize=1)
def _flux_world():
    """The world's Flux and its heads through UNETLoader, CLIPLoader and VAELoader; skipped where this ComfyUI cannot
    read a Flux of its width."""
    from world.assemble import flux_state_dict
    from world.experiments import World
    from world.flux import comfyui_reads_world_flux

    if not comfyui_reads_world_flux(flux_state_dict()):
        return None
    return World.load("flux")


def flux_world():
    world = _flux_world()
    if world is None:
        pytest.skip("this ComfyUI (0.3.75) takes every Flux for 24 heads of 128: the world's Flux loads on 0.33+")
    return world


def test_world_flux_loads_as_flux_and_follows_its_prompts():
    from world.experiments import model_quality

    world = flux_world()
    assert type(world.model.model).__name__ == "Flux"
    assert world.model.model.diffusion_model.hidden_size == 128 and "depth" in world.heads
    assert model_quality(world, range(6))["colours_present"] >= QUALITY_FLOOR


def test_world_flux_depth_guidance_puts_objects_where_the_map_says():
    from world.experiments import spatial

    records = [spatial(flux_world(), "depth", seed) for seed in EFFECT_SEEDS]
    assert np.mean([r["guided"] - r["unguided"] for r in records]) >= FLUX_SPATIAL_IOU_GAIN, records


def test_world_flux_self_guidance_moves_the_word_object_toward_the_goal():
    from world.experiments import self_guidance

    records = [self_guidance(flux_world(), seed, "move_to") for seed in EFFECT_SEEDS]
    assert sum(r.get("closed", 0) >= 0.5 for r in records) >= FLUX_SELF_GUIDANCE_HALF_WAY, records


def test_world_zimage_widened_computes_the_narrow_model():
    """The world Z-Image trains narrow and is tiled to Z-Image's width: here to three times the narrow width (six
    heads), which is the same rule as fifteen, and computes what the narrow model computes."""
    from world.distill import dense_state_dict
    from world.zimage import NARROW_CONFIG, build_narrow, build_nextdit, widen_state_dict

    factored = build_narrow(0)
    with torch.no_grad():
        for param in factored.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    narrow_weights = {k: v.float() for k, v in dense_state_dict(dict(factored.state_dict())).items()}
    narrow = build_nextdit(NARROW_CONFIG)
    narrow.load_state_dict(narrow_weights)
    config = {**NARROW_CONFIG, "dim": 3 * NARROW_CONFIG["dim"], "n_heads": 6, "n_kv_heads": 6}
    wide = build_nextdit(config)
    wide.load_state_dict(widen_state_dict(narrow_weights, config))
    gen = torch.Generator().manual_seed(1)
    x, t, context = torch.randn(2, 16, 8, 8, generator=gen), torch.tensor([0.3, 0.8]), torch.randn(2, 9, 768, generator=gen)
    with torch.no_grad():
        want, got = narrow(x, t, context, num_tokens=9), wide(x, t, context, num_tokens=9)
    assert want.abs().mean() > 0.05 and torch.allclose(want, got, atol=1e-4)


def test_world_zimage_cli_trains_factored_narrow_weights_from_the_guided_teacher(tmp_path):
    from safetensors import safe_open

    train_briefly("world.zimage", tmp_path, 2)
    with safe_open(str(tmp_path / paths.ZIMAGE_WEIGHTS), framework="pt") as handle:
        assert handle.metadata()["steps"] == "2"
        assert handle.get_slice("layers.0.attention.qkv.factor_a").get_shape() == [768, 32]


def test_world_qwen_image_widened_computes_the_narrow_model():
    """The world Qwen-Image trains narrow and is tiled to Qwen-Image's width, its text padded to Qwen-Image's text
    width: here to six times the narrow width (six heads) and 1000 text channels, with a reference image's tokens
    appended as Qwen-Image-Edit appends them, it computes what the narrow model computes."""
    from world.distill import dense_state_dict
    from world.qwen_image import NARROW_CONFIG, build_narrow, build_qwen_image, pad_text, widen_state_dict

    factored = build_narrow(0)
    with torch.no_grad():
        for param in factored.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())))
    narrow_weights = {k: v.float() for k, v in dense_state_dict(dict(factored.state_dict())).items()}
    narrow = build_qwen_image(NARROW_CONFIG)
    narrow.load_state_dict(narrow_weights)
    config = {**NARROW_CONFIG, "num_attention_heads": 6, "joint_attention_dim": 1000}
    wide = build_qwen_image(config)
    wide.load_state_dict(widen_state_dict(narrow_weights, config))
    gen = torch.Generator().manual_seed(1)
    x, reference = (torch.randn(2, 16, 1, 8, 8, generator=gen) for _ in range(2))
    t, context = torch.tensor([0.3, 0.8]), torch.randn(2, 9, 768, generator=gen)
    with torch.no_grad():
        want = narrow(x, t, context, ref_latents=[reference])
        got = wide(x, t, pad_text(context, 1000), ref_latents=[reference])
    assert want.abs().mean() > 0.05 and torch.allclose(want, got, atol=1e-4)


def test_world_qwen_image_cli_trains_factored_narrow_weights_with_edit_steps(tmp_path):
    from safetensors import safe_open

    from world.qwen_image import RANK

    train_briefly("world.qwen_image", tmp_path, 4)  # 3 dense steps (the third an edit step), then 1 factored
    with safe_open(str(tmp_path / paths.QWEN_IMAGE_WEIGHTS), framework="pt") as handle:
        assert handle.metadata()["steps"] == "4"
        assert handle.get_slice("transformer_blocks.0.img_mlp.net.0.proj.factor_a").get_shape() == [512, RANK]
        assert handle.get_slice("transformer_blocks.0.attn.to_q.weight").get_shape() == [128, 128]


def test_wan_latents_of_the_world_hold_the_flux_latents_patch_codes():
    """The world's Qwen-Image reads Wan 2.1 latents: converted from the world TAESD16's Flux latent and back, they
    give the same latent, and Wan's normalization hands the model the codes that Flux's does."""
    from comfy.latent_formats import Flux, Wan21

    from world.qwen_image import flux_latent, wan_latent

    flux = Flux().process_out(torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(2)))
    wan = wan_latent(flux)
    assert wan.shape == (2, 16, 1, 4, 4)
    assert torch.allclose(Wan21().process_in(wan)[:, :, 0], Flux().process_in(flux), atol=1e-5)
    assert torch.allclose(flux_latent(wan), flux, atol=1e-5)


@pytest.mark.parametrize("family", ["zimage", "qwen_image"])
def test_tiled_world_heads_read_exactly_what_the_trained_ones_read(tmp_path, family):
    """A head trained on the world Z-Image reads features that repeat 256 channels 15 times (the world Qwen-Image:
    128 channels 24 times, its time embedding too): stored with its input weights summed over the copies and expanded again, it
    reads any such features exactly as trained."""
    from testbed.nodes import pack_module
    from world import qwen_image, zimage
    from world.heads import TILED_INPUTS, TILED_WITH_EMBEDDING, compress_head_file, expand_head_file

    files = pack_module("readout.heads.files")
    architecture = pack_module("readout.heads.architecture")
    narrow_dim, tiles, tiled_inputs = ((zimage.NARROW_CONFIG["dim"], zimage.TILES, TILED_INPUTS) if family == "zimage"
                                       else (128, qwen_image.TILES, TILED_WITH_EMBEDDING))
    wide = narrow_dim * tiles
    emb_tiles = tiles if family == "qwen_image" else 1
    config = architecture.HeadConfig(kind="depth", family="lumina2" if family == "zimage" else family,
                                     dims=(wide,) * 3, projection_dim=128,
                                     emb_dim=(narrow_dim if family == "qwen_image" else 256) * emb_tiles,
                                     use_output_head=True, control_range=(-1.0, 1.0))
    torch.manual_seed(3)
    heads = [architecture.ReadoutHead(config)]
    original, narrow, restored = (str(tmp_path / f"{n}.safetensors") for n in ("original", "narrow", "restored"))
    files.save_head_safetensors(original, config, heads[0].state_dict())
    compress_head_file(original, narrow, tiles, tiled_inputs)
    expand_head_file(narrow, restored)
    assert os.path.getsize(narrow) < 0.3 * os.path.getsize(original)
    heads.append(architecture.ReadoutHead(files.load_head_file(restored)[0]))
    heads[1].load_state_dict({k: v.float() for k, v in files.load_head_file(restored)[1].items()})
    heads[0].half().float()  # the stored head is fp16
    gen = torch.Generator().manual_seed(4)
    features = [torch.randn(2, narrow_dim, 8, 8, generator=gen).repeat(1, tiles, 1, 1) for _ in range(3)]
    emb = torch.randn(2, config.emb_dim // emb_tiles, generator=gen).repeat(1, emb_tiles)
    with torch.no_grad():
        reads = [head.eval()(features, emb) for head in heads]
    assert reads[0].abs().mean() > 0.01 and torch.allclose(reads[0], reads[1], atol=5e-3 * reads[0].abs().max())
