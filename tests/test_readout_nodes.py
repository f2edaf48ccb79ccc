"""LoadReadoutHead and ExtractReadout on the tiny model, in process and through the real server."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TINY_CKPT, call_node, every_family, node_output, pack_module, sample_image
from tiny.models import tiny_head_name

SD15_DIMS = [1280] * 6 + [640] * 3 + [320] * 3
SDXL_DIMS = [1280] * 3 + [640] * 3 + [320] * 3


def load(name: str, **options):
    out = node_output("LoadReadoutHead", head_name=name, **options)
    return out["result"][0], out


def extract(tiny, head, image, **options):
    model, clip, vae = tiny
    return call_node("ExtractReadout", model=model, vae=vae, head=head, image=image, timestep=options.pop("timestep", -1),
                     seed=0, clip=clip, **options)


@pytest.mark.every_comfyui
def test_load_readout_head_reports_kind_and_family():
    head, out = load(tiny_head_name("pose"))
    info = out["result"][1]
    assert info == out["ui"]["text"][0]
    assert "pose head for SD1.5" in info and "4 decoder layers" in info
    assert all(not p.is_inference() for p in head.module.parameters())
    relative, _ = load(tiny_head_name("correspondence"))
    assert "correspondence head" in relative.describe() and not relative.config.use_emb


@pytest.mark.every_comfyui
@every_family
def test_spatial_readout_is_a_control_image_of_the_input_size(tiny, family):
    head, _ = load(tiny_head_name("depth", family=family))
    image, readout = extract(tiny, head, sample_image(48, 80))
    assert image.shape == (1, 48, 80, 3)
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 1e-3
    assert readout.tensor.shape == (1, 3, 6, 10)
    assert readout.timestep == head.config.save_timestep[0] and readout.config.kind == "depth"


@every_family
def test_relative_readout_is_shown_as_pca_colours(tiny, family):
    head, _ = load(tiny_head_name("appearance", family=family))
    image, readout = extract(tiny, head, sample_image())
    assert readout.tensor.shape == (1, 384, 8, 8)
    assert image.shape == (1, 64, 64, 3)
    for channel in range(3):
        assert image[..., channel].max() - image[..., channel].min() > 0.5


def test_safetensors_and_official_pt_give_identical_readouts(tiny):
    ours, _ = load(tiny_head_name("pose"))
    official, _ = load(tiny_head_name("pose", ".pt"))
    assert official.config == ours.config
    assert torch.equal(extract(tiny, ours, sample_image())[1].tensor, extract(tiny, official, sample_image())[1].tensor)


def test_noise_level_changes_the_readout(tiny):
    head, _ = load(tiny_head_name("edge"))
    clean = extract(tiny, head, sample_image(), timestep=0)[1].tensor
    noisy = extract(tiny, head, sample_image(), timestep=800)[1].tensor
    assert (clean - noisy).abs().mean() > 1e-3


@pytest.mark.every_comfyui
def test_head_is_loaded_by_comfy_model_management(tiny):
    import comfy.model_management as mm

    head, _ = load(tiny_head_name("pose"))
    extract(tiny, head, sample_image())
    assert any(loaded.model is head.patcher for loaded in mm.current_loaded_models)


def test_extract_without_prompt_or_clip_names_the_inputs(tiny):
    model, _, vae = tiny
    head, _ = load(tiny_head_name("pose"))
    with pytest.raises(ValueError, match="positive / clip"):
        call_node("ExtractReadout", model=model, vae=vae, head=head, image=sample_image(), timestep=-1, seed=0)


def test_unknown_head_file_names_the_input():
    with pytest.raises(ValueError, match="head_name: 'nope.pt' is not in models/readout_heads"):
        call_node("LoadReadoutHead", head_name="nope.pt")


@pytest.fixture()
def extra_heads_dir(model_folders):
    return model_folders / "readout_heads"


def write_random_head(path, kind: str, family: str, dims: list[int]) -> None:
    checkpoints, heads = pack_module("readout.heads.files"), pack_module("readout.heads.architecture")
    config = heads.HeadConfig(kind=kind, family=family, dims=tuple(dims), use_output_head=True)
    with torch.inference_mode(False):
        state = heads.ReadoutHead(config).state_dict()
    checkpoints.save_head_safetensors(str(path), config, state)


def test_sdxl_head_on_sd15_model_is_refused_with_the_families(tiny, extra_heads_dir):
    write_random_head(extra_heads_dir / "my_sdxl_depth.safetensors", "depth", "sdxl", SDXL_DIMS)
    head, _ = load("my_sdxl_depth.safetensors")
    with pytest.raises(ValueError, match=r"head 'my_sdxl_depth.safetensors' expects SDXL features \(9 decoder layers\), "
                                         r"but the model is SD1.5: load an sdv15 head"):
        extract(tiny, head, sample_image())


def test_head_for_other_decoder_channels_is_refused(tiny, extra_heads_dir):
    write_random_head(extra_heads_dir / "real_sd15_depth.safetensors", "depth", "sd15", SD15_DIMS)
    head, _ = load("real_sd15_depth.safetensors")
    with pytest.raises(ValueError, match=r"expects decoder channels \[1280, .*\] but the model's decoder has \[640, 640, 320, 320\]"):
        extract(tiny, head, sample_image())


@pytest.mark.every_comfyui
def test_load_and_extract_run_as_a_workflow_over_http(comfy_server):
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CKPT}},
        "2": {"class_type": "LoadReadoutHead", "inputs": {"head_name": tiny_head_name("pose", ".pt")}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 96, "height": 64, "batch_size": 1, "color": 0x3366AA}},
        "4": {"class_type": "ExtractReadout", "inputs": {
            "model": ["1", 0], "vae": ["1", 2], "head": ["2", 0], "image": ["3", 0], "clip": ["1", 1],
            "timestep": 50, "seed": 0}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "rg_readout"}},
    }
    entry = comfy_server.run(prompt)
    assert "pose head for SD1.5" in entry["outputs"]["2"]["text"][0]
    saved = entry["outputs"]["5"]["images"][0]
    pixels = np.asarray(Image.open(os.path.join(comfy_server.output_dir, saved["subfolder"], saved["filename"])))
    assert pixels.shape == (64, 96, 3)
