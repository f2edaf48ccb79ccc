"""Readout Score, Draw Drag Points and Word Attention Map: what a user checks guidance with, on the tiny model."""
from __future__ import annotations

import json

import pytest
import torch

from helpers import ONE_PASS, call_node, node_output, pack_module, sample_image
from tiny.models import tiny_head_name


def head(kind: str):
    return call_node("LoadReadoutHead", head_name=tiny_head_name(kind))[0]


def extract(tiny, readout_head, image, **options):
    model, clip, vae = tiny
    return call_node("ExtractReadout", model=model, vae=vae, head=readout_head, image=image, timestep=-1, seed=0,
                     clip=clip, **options)


@pytest.mark.every_comfyui
def test_spatial_score_is_the_target_loss_and_lowest_for_the_readout_itself(tiny):
    pose = head("pose")
    readout_image, readout = extract(tiny, pose, sample_image())
    own = call_node("ReadoutTarget", head=pose, weight=0.43, start_percent=0.0, end_percent=0.5,
                    target_image=readout_image)[0]
    other = call_node("ReadoutTarget", head=pose, weight=0.43, start_percent=0.0, end_percent=0.5,
                      target_image=1 - readout_image)[0]
    near = node_output("ReadoutScore", readout=readout, guidance=own)
    far = node_output("ReadoutScore", readout=readout, guidance=other)
    assert near["result"][0] < 0.25 * far["result"][0]
    assert near["ui"]["scores"][0]["higher_is_better"] is False
    assert "pose loss" in near["result"][1] and "lower is better" in near["result"][1]


def test_drag_score_is_similarity_at_each_target_and_points_are_drawn(tiny):
    correspondence = head("correspondence")
    image = sample_image()
    reference_image, reference = extract(tiny, correspondence, image)
    points = json.dumps([{"source": [10, 10], "target": [10, 10]}, {"source": [5, 5], "target": [60, 60]}])
    drag = call_node("ReadoutDragTarget", correspondence_head=correspondence, points=points, drag_weight=0.43,
                     start_percent=0.0, end_percent=0.5, reference_image=image)[0]
    scores = node_output("ReadoutScore", readout=reference, guidance=drag, reference=reference)["ui"]["scores"]
    assert [s["label"] for s in scores] == ["similarity at target 1", "similarity at target 2"]
    assert scores[0]["value"] == pytest.approx(1.0, abs=1e-5) and scores[1]["value"] < 0.999
    assert all(s["higher_is_better"] for s in scores)
    drawn = call_node("DrawDragPoints", image=reference_image, guidance=drag)[0]
    assert drawn.shape == reference_image.shape
    changed = (drawn - reference_image).abs().sum(dim=-1)[0] > 0.1
    assert changed[4:7, 4:7].all() and changed[56:64, 56:64].any() and not changed[40:50, 5:15].any()


def test_relative_colours_follow_colors_from(tiny):
    correspondence = head("correspondence")
    first_image, first = extract(tiny, correspondence, sample_image())
    same_image, _ = extract(tiny, correspondence, sample_image(), colors_from=first)
    assert torch.allclose(first_image, same_image, atol=0.02)
    with pytest.raises(ValueError, match="colors_from: it was read with"):
        extract(tiny, head("appearance"), sample_image(), colors_from=first)


def test_colors_from_colours_part_of_a_map_as_the_whole_map_colours_it():
    """With a basis, a feature map's left half gets exactly the colours it has in the whole map; its own PCA
    would rescale the half to the full colour range."""
    pca_colors = pack_module("readout.heads.readouts").pca_colors
    features = torch.randn(1, 8, 6, 10, generator=torch.Generator().manual_seed(4))
    features[:, 0] += torch.linspace(0, 6, 10)
    torch.manual_seed(0)
    whole = pca_colors(features)
    torch.manual_seed(0)
    half = pca_colors(features[..., :5], basis=features)
    torch.manual_seed(0)
    own = pca_colors(features[..., :5])
    torch.testing.assert_close(half, whole[..., :5])
    assert (own - whole[..., :5]).abs().max() > 0.1


def test_score_errors_name_the_input(tiny):
    pose, depth = head("pose"), head("depth")
    _, readout = extract(tiny, pose, sample_image())
    target = call_node("ReadoutTarget", head=depth, weight=0.43, start_percent=0.0, end_percent=0.5,
                       target_image=sample_image())[0]
    with pytest.raises(ValueError, match="guidance: no target in it uses the head"):
        call_node("ReadoutScore", readout=readout, guidance=target)
    appearance = head("appearance")
    _, app_readout = extract(tiny, appearance, sample_image())
    app_target = call_node("ReadoutAppearanceTarget", appearance_head=appearance, weight=0.43, start_percent=0.0,
                           end_percent=0.5)[0]
    with pytest.raises(ValueError, match="reference: the appearance"):
        call_node("ReadoutScore", readout=app_readout, guidance=app_target)
    _, other_head = extract(tiny, head("correspondence"), sample_image())
    with pytest.raises(ValueError, match="reference: it was read with"):
        call_node("ReadoutScore", readout=app_readout, guidance=app_target, reference=other_head)


def test_move_by_goal_is_the_unguided_centroid_plus_the_offset():
    report = pack_module("readout.report.word_attention")
    targets = pack_module("readout.targets.self_guidance")
    window = pack_module("readout.targets.spatial").StepWindow()
    move = targets.SelfGuidanceTarget("cat", (2,), "sd15", "move_by", 1.0, window, offset=(0.25, 0.0))
    unguided = torch.zeros(1, 1, 8, 8)
    unguided[..., 3, 1] = 1.0
    moved = torch.zeros(1, 1, 8, 8)
    moved[..., 3, 3] = 1.0
    before, after = report.check_edit(move, unguided, unguided), report.check_edit(move, moved, unguided)
    assert before.goals[0].tolist() == pytest.approx([1.5 / 8 + 0.25, 3.5 / 8])
    assert after.losses[0] < before.losses[0]
    with pytest.raises(ValueError, match="unguided_samples: move_by is measured"):
        report.check_edit(move, moved, None)
    with pytest.raises(ValueError, match="unguided_samples: it holds 2 latents for 3"):
        report.check_edit(move, moved.repeat(3, 1, 1, 1), unguided.repeat(2, 1, 1, 1))


def test_extract_readout_reads_a_latent_as_it_is(tiny):
    """latent: the sampler's output read without the VAE round trip (which the tiny random VAE scrambles)."""
    model, clip, vae = tiny
    pose = head("pose")
    latent = {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))}
    image, readout = call_node("ExtractReadout", model=model, vae=vae, head=pose, latent=latent, timestep=-1,
                               seed=0, clip=clip)
    empty = call_node("CLIPTextEncode", text="", clip=clip)[0]
    with torch.inference_mode():
        direct = pack_module("readout.heads.extract").latent_readout(model, pose, latent["samples"], empty,
                                                                     pose.config.save_timestep[0], 0)
    assert torch.equal(readout.tensor, direct)
    assert image.shape == (1, 64, 64, 3) and readout.image_size == (64, 64)
    _, round_trip = extract(tiny, pose, call_node("VAEDecode", vae=vae, samples=latent)[0])
    assert (round_trip.tensor - direct).abs().mean() > 0.05 * direct.abs().mean()
    for inputs in ({}, {"latent": latent, "image": image}):
        with pytest.raises(ValueError, match="image / latent: connect exactly one"):
            call_node("ExtractReadout", model=model, vae=vae, head=pose, timestep=-1, seed=0, clip=clip, **inputs)
    with pytest.raises(ValueError, match="latent: it holds latents of shape"):
        call_node("ExtractReadout", model=model, vae=vae, head=pose, timestep=-1, seed=0, clip=clip,
                  latent={"samples": torch.zeros(1, 4, 2, 8, 8)})


@pytest.mark.every_comfyui
def test_word_attention_map_shows_self_guidance_moving_the_word(tiny):
    """The demo's claim on the tiny model: guided, the word's attention is nearer the goal than unguided."""
    model, clip, _ = tiny
    prompt = "a photo of a cat sitting on a sofa"
    positive = call_node("CLIPTextEncode", text=prompt, clip=clip)[0]
    negative = call_node("CLIPTextEncode", text="", clip=clip)[0]
    move = call_node("SelfGuidanceTarget", clip=clip, prompt=prompt, words="cat", edit="move_by", dx=0.25, dy=0.0,
                     x=0.5, y=0.5, size_factor=1.5, weight=1.0, start_percent=0.0, end_percent=0.5)[0]
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    guided, _, unguided = call_node("ReadoutGuidedKSampler", model=model, seed=1, steps=8, cfg=5.0,
                                    sampler_name="euler", scheduler="normal", positive=positive, negative=negative,
                                    latent_image=latent, denoise=1.0, guidance=move, **ONE_PASS)
    read = lambda samples: node_output("WordAttentionMap", model=model, positive=positive, samples=samples,  # noqa: E731
                                     guidance=move, timestep=500, seed=0, unguided_samples=unguided)
    before, after = read(unguided), read(guided)
    assert after["result"][1] < 0.95 * before["result"][1]
    picture = after["result"][0]
    assert picture.shape == (1, 64, 64, 3)
    assert "goal (" in after["result"][2] and "lower is better" in after["result"][2]
    with pytest.raises(ValueError, match="unguided_samples: move_by is measured"):
        call_node("WordAttentionMap", model=model, positive=positive, samples=guided, guidance=move, timestep=500,
                  seed=0)


def test_loss_plot_keeps_a_loss_that_goes_negative_inside_its_frame():
    """A drag loss falls below 0: its curve spans the frame from top (first value) to bottom (last), not beyond."""
    plot = pack_module("readout.guidance.loss_plot")
    image = plot.plot_losses([[(0.0, 0.03), (0.5, 0.01), (1.0, -0.01)]], ["drag"])[0]
    red = torch.tensor(plot.COLORS[0], dtype=torch.float32) / 255
    rows = ((image - red).abs().sum(dim=-1) < 0.05).nonzero()[:, 0]
    curve = rows[rows > 40]
    bottom = plot.HEIGHT - plot.MARGIN
    assert curve.numel() > 0 and bottom - 3 <= curve.max() <= bottom + 2
