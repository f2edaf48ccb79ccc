"""The test bed itself: tiny models through ComfyUI's real loaders, samplers, ControlNet, LoRA and server."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import (
    TINY_CKPT,
    TINY_CONTROLNET,
    TINY_LORA,
    call_node,
    schema_inputs,
    run_prompt,
    text_to_image_prompt,
)
from testbed import REPO
from testbed.workflow_api import ui_to_api


def sample(model, clip, seed: int = 3, steps: int = 4, positive=None, negative=None) -> torch.Tensor:
    pos = positive or call_node("CLIPTextEncode", text="a red cube on a table", clip=clip)[0]
    neg = negative or call_node("CLIPTextEncode", text="", clip=clip)[0]
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    return call_node("KSampler", model=model, seed=seed, steps=steps, cfg=5.0, sampler_name="euler",
                     scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)[0]["samples"]


@pytest.mark.every_comfyui
def test_tiny_checkpoint_loads_as_sd15_and_samples_an_image(tiny):
    model, clip, vae = tiny
    assert type(model.model.model_config).__name__ == "SD15"
    decoder = [b[0] for b in model.model.diffusion_model.output_blocks]
    assert [m.out_channels for m in decoder] == [640, 640, 320, 320]
    samples = sample(model, clip)
    image = call_node("VAEDecode", samples={"samples": samples}, vae=vae)[0]
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(samples).all() and torch.isfinite(image).all()
    assert image.std() > 0.05, "decoded image is constant"


def test_prompt_changes_the_sample(tiny):
    model, clip, _ = tiny
    other = call_node("CLIPTextEncode", text="a blue sphere in the sky", clip=clip)[0]
    assert not torch.equal(sample(model, clip), sample(model, clip, positive=other))


@pytest.mark.every_comfyui
def test_controlnet_and_lora_apply_with_stock_nodes(tiny):
    model, clip, vae = tiny
    plain = sample(model, clip)
    pos = call_node("CLIPTextEncode", text="a red cube on a table", clip=clip)[0]
    neg = call_node("CLIPTextEncode", text="", clip=clip)[0]
    controlnet = call_node("ControlNetLoader", control_net_name=TINY_CONTROLNET)[0]
    hint = torch.zeros(1, 64, 64, 3)
    hint[:, 16:48, 16:48] = 1.0
    pos_c, neg_c = call_node("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=controlnet,
                             image=hint, strength=1.0, start_percent=0.0, end_percent=1.0, vae=vae)
    controlled = sample(model, clip, positive=pos_c, negative=neg_c)
    lora_model, lora_clip = call_node("LoraLoader", model=model, clip=clip, lora_name=TINY_LORA,
                                      strength_model=1.0, strength_clip=1.0)
    with_lora = sample(lora_model, lora_clip)
    for result in (controlled, with_lora):
        assert torch.isfinite(result).all()
        assert (result - plain).abs().mean() > 1e-3
    assert torch.equal(sample(model, clip), plain), "LoRA leaked into the shared model"


@pytest.mark.every_comfyui
def test_prompt_runs_in_process_through_the_executor():
    result = run_prompt(text_to_image_prompt(prefix="rg_in_process"))
    assert result.success, result.error_text()
    images = result.outputs["7"]["images"]
    assert len(images) == 1 and images[0]["filename"].startswith("rg_in_process")


@pytest.mark.every_comfyui
def test_text_to_image_over_http(comfy_server):
    entry = comfy_server.run(text_to_image_prompt(prefix="rg_http"))
    image = entry["outputs"]["7"]["images"][0]
    pixels = np.asarray(Image.open(os.path.join(comfy_server.output_dir, image["subfolder"], image["filename"])))
    assert pixels.shape == (64, 64, 3)
    assert pixels.std() > 5


@pytest.mark.every_comfyui
def test_ui_workflow_converts_like_the_editor(comfy_server):
    with open(os.path.join(REPO, "example_workflows", "text_to_image.json"), encoding="utf-8") as f:
        prompt = ui_to_api(json.load(f), comfy_server.get("/object_info"))
    assert "8" not in prompt, "the Note node is frontend-only"
    ksampler = prompt["5"]["inputs"]
    assert ksampler == {"seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                        "denoise": 1.0, "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                        "latent_image": ["4", 0]}
    assert prompt["6"]["inputs"] == {"samples": ["5", 0], "vae": ["1", 2]}


def test_workflows_get_the_stand_ins_of_their_own_family():
    from testbed.tiny_names import NoStandIn, swap_model_names

    def workflow(ckpt: str, head: str, **extra) -> dict:
        return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
                "2": {"class_type": "LoadReadoutHead", "inputs": {"head_name": head}},
                "3": {"class_type": "ControlNetLoader", "inputs": extra}}

    xl = swap_model_names(workflow("sd_xl_base_1.0.safetensors", "readout_sdxl_spatial_pose.pt"))
    assert (xl["1"]["inputs"]["ckpt_name"], xl["2"]["inputs"]["head_name"]) == (
        "readout_tiny_sdxl.safetensors", "readout_tiny_sdxl_spatial_pose.safetensors")
    sd15 = swap_model_names(workflow("v1-5-pruned-emaonly.safetensors", "readout_sdv15_drag_appearance.pt",
                                     control_net_name="control_v11p_sd15_openpose.pth"))
    assert (sd15["1"]["inputs"]["ckpt_name"], sd15["2"]["inputs"]["head_name"], sd15["3"]["inputs"]) == (
        TINY_CKPT, "readout_tiny_sd15_drag_appearance.safetensors", {"control_net_name": TINY_CONTROLNET})
    for bad, message in ((workflow("my_model.safetensors", "readout_sdv15_spatial_pose.pt"), "has no tiny stand-in"),
                         (workflow("sd_xl_base_1.0.safetensors", "readout_sdv15_spatial_pose.pt"),
                          "is for sd15 but the workflow's checkpoint is sdxl"),
                         (workflow("sd_xl_base_1.0.safetensors", "readout_sdxl_spatial_pose.pt",
                                   control_net_name="xl_canny.safetensors"), "no tiny sdxl stand-in")):
        with pytest.raises(NoStandIn, match=message):
            swap_model_names(bad)


def test_setup_refuses_a_comfyui_path_that_is_not_comfyui(tmp_path):
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "scripts.setup_testbed"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert f"COMFYUI_PATH={tmp_path} is not a ComfyUI checkout" in proc.stderr


@pytest.mark.every_comfyui
def test_tiny_models_are_deterministic_and_match_the_files():
    import folder_paths
    from safetensors import safe_open

    from tiny.models import build_taesd, tiny_lora_state_dict

    lora_a, lora_b = tiny_lora_state_dict(), tiny_lora_state_dict()
    assert lora_a.keys() == lora_b.keys() and all(torch.equal(lora_a[k], lora_b[k]) for k in lora_a)
    with safe_open(folder_paths.get_full_path("checkpoints", TINY_CKPT), "pt") as f:
        stored = f.get_tensor("first_stage_model.taesd_decoder.1.weight")
    rebuilt = build_taesd(1235).taesd_decoder[1].weight.half()
    assert torch.equal(stored, rebuilt)


WEIGHTS_FOLDER = "world/weights/"


def _committed_sizes() -> dict[str, int]:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return {f: os.path.getsize(os.path.join(REPO, f)) for f in files if os.path.isfile(os.path.join(REPO, f))}


def test_no_committed_file_is_over_one_megabyte_outside_the_trained_weights():
    big = [f for f, size in _committed_sizes().items() if size > 1 << 20 and not f.startswith(WEIGHTS_FOLDER)]
    assert not big


def test_trained_weights_are_fp16_safetensors_within_24_megabytes():
    """The budget grew from 16 to 24 MB for the world's Z-Image and its heads (world/weights/README.md)."""
    from safetensors import safe_open

    weights = {f: size for f, size in _committed_sizes().items() if f.startswith(WEIGHTS_FOLDER)}
    assert sum(weights.values()) <= 24 * 10**6
    tensors = [f for f in weights if f.endswith(".safetensors")]
    assert tensors and all(size < 1 << 20 for f, size in weights.items() if f not in tensors)
    for f in tensors:
        with safe_open(os.path.join(REPO, f), "pt") as file:
            dtypes = {file.get_slice(k).get_dtype() for k in file.keys()}
        assert dtypes == {"F16"}, (f, dtypes)


@pytest.mark.every_comfyui
def test_readout_heads_folder_is_registered_and_keeps_extra_paths(tmp_path):
    import folder_paths

    from helpers import pack_module

    paths = folder_paths.get_folder_paths("readout_heads")
    assert paths[0] == os.path.join(folder_paths.models_dir, "readout_heads")
    folder_paths.add_model_folder_path("readout_heads", str(tmp_path))
    pack_module("readout.heads.model_folder").register_model_folders()
    paths, extensions = folder_paths.folder_names_and_paths["readout_heads"]
    assert str(tmp_path) in paths and {".pt", ".safetensors"} <= extensions
    (tmp_path / "extra_head.safetensors").write_bytes(b"")
    (tmp_path / "extra_head.state.pt").write_bytes(b"")
    (tmp_path / "official_head.pt").write_bytes(b"")
    listed = schema_inputs("LoadReadoutHead")["head_name"].options
    assert {"extra_head.safetensors", "official_head.pt"} <= set(listed) and "extra_head.state.pt" not in listed
    paths.remove(str(tmp_path))


def test_ci_finds_every_module_that_uses_the_server(request):
    """CI's xdist scheduler keeps the modules whose tests take the server or Chromium in one work unit (one server
    process, one Chromium); the modules it finds by their functions' arguments are those pytest resolves."""
    from conftest import SERVER_FIXTURES, modules_using_the_server

    found = modules_using_the_server(os.path.dirname(__file__))
    using = {os.path.basename(item.module.__file__) for item in request.session.items
             if SERVER_FIXTURES & set(item.fixturenames)}
    assert using <= found, f"modules that use the server but are not found: {using - found}"
    assert {"test_browser_editor.py", "test_demo_page.py"} <= found and "test_guided_sampling.py" not in found
