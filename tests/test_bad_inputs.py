"""Inputs a hostile but realistic user sends (issue #23): each is refused naming the input and the fix, or works and
says so on the node; run through ComfyUI's executor as the server runs a queued prompt."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil

import pytest
import torch

from helpers import (SpatialBed, call_node, own_model_folders, pack_module, prompt_executor, run_prompt,
                     text_to_image_prompt)
from tiny.models import tiny_head_name

POINTS = json.dumps([{"source": [16, 16], "target": [40, 40]}])


def api_graph(**extra: dict) -> dict:
    """The tiny checkpoint, its prompts and a 64x64 latent (nodes 1-4), plus `extra` nodes by id."""
    base = text_to_image_prompt()
    return {**{key: base[key] for key in ("1", "2", "3", "4")}, **extra}


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def head_node(kind: str) -> dict:
    return node("LoadReadoutHead", head_name=tiny_head_name(kind))


def image_node(width: int, height: int) -> dict:
    return node("EmptyImage", width=width, height=height, batch_size=1, color=0x8040C0)


def guided_sampler(guidance: list, **options) -> dict:
    return node("ReadoutGuidedKSampler", model=["1", 0], seed=1, steps=2, cfg=5.0, sampler_name="euler",
                scheduler="normal", positive=["2", 0], negative=["3", 0], latent_image=["4", 0], denoise=1.0,
                guidance=guidance, **options)


def decoded(samples: list) -> dict:
    """Decode and preview a latent output: what makes the graph an output."""
    return {"98": node("VAEDecode", samples=samples, vae=["1", 2]), "99": node("PreviewImage", images=["98", 0])}


def spatial_graph(target: dict, **extra: dict) -> dict:
    """A pose target (node 11, its map from node 10) sampled by the guided sampler (node 12)."""
    return api_graph(**{"9": head_node("pose"), "10": image_node(64, 64), "11": target, "12": guided_sampler(["11", 0]),
                        **decoded(["12", 0]), **extra})


def pose_target(**inputs) -> dict:
    return node("ReadoutTarget", **{"head": ["9", 0], "weight": 1.0, "start_percent": 0.0, "end_percent": 1.0,
                                    "target_image": ["10", 0], **inputs})


def refused(prompt: dict, node_type: str, message: str, exception_type: str = "ValueError") -> dict:
    """Run a prompt that must stop at `node_type` with a short error type and a message matching `message`."""
    error = run_prompt(prompt).error()
    assert error["node_type"] == node_type, error
    assert error["exception_type"] == exception_type, error
    assert re.search(message, error["exception_message"]), error
    return error


@pytest.fixture
def heads_folder(tmp_path):
    """The only readout_heads folder, the test's own, holding copies of the tiny pose and depth heads to damage or
    rewrite."""
    import folder_paths

    sources = {kind: folder_paths.get_full_path("readout_heads", tiny_head_name(kind)) for kind in ("pose", "depth")}
    with own_model_folders(tmp_path, only=True) as root:
        for kind, source in sources.items():
            shutil.copy(source, root / "readout_heads" / f"{kind}.safetensors")
        yield root / "readout_heads"


@pytest.fixture(scope="module")
def bed() -> SpatialBed:
    return SpatialBed(steps=4)


def test_inverted_image_of_another_size_than_the_latent_is_refused_before_sampling():
    for width, height in ((72, 40), (4000, 16)):
        refused(api_graph(**{
            "9": head_node("appearance"), "10": image_node(width, height),
            "11": node("ReadoutInvertImage", model=["1", 0], vae=["1", 2], image=["10", 0], positive=["2", 0], steps=2,
                       scheduler="normal", refinements=0),
            "12": node("ReadoutAppearanceTarget", appearance_head=["9", 0], weight=1.0, start_percent=0.0,
                       end_percent=1.0, reference=["11", 0]),
            "13": guided_sampler(["12", 0]), **decoded(["13", 0])}),
            "ReadoutGuidedKSampler", rf"reference: the image was inverted at {width}x{height} px .* but latent_image "
                                     r"is 8x8 \(64x64 px\); sample at the image's size")


@pytest.mark.parametrize("size", [1, 7])
def test_image_smaller_than_a_latent_cell_is_refused_naming_the_size_needed(size):
    needs = rf"image: it is {size}x{size} px; .* needs at least 8 px on each side .*: scale it up"
    refused(api_graph(**{"9": head_node("pose"), "10": image_node(size, size),
                         "11": node("ExtractReadout", model=["1", 0], vae=["1", 2], head=["9", 0], timestep=-1, seed=0,
                                    image=["10", 0], clip=["1", 1]),
                         "99": node("PreviewImage", images=["11", 0])}), "ExtractReadout", needs)
    refused(api_graph(**{"10": image_node(size, size),
                         "11": node("ReadoutInvertImage", model=["1", 0], vae=["1", 2], image=["10", 0],
                                    positive=["2", 0], steps=2, scheduler="normal", refinements=0),
                         "12": node("ReadoutAppearanceTarget", appearance_head=["9", 0], weight=1.0, start_percent=0.0,
                                    end_percent=1.0, reference=["11", 0]),
                         "9": head_node("appearance"), "13": guided_sampler(["12", 0]), **decoded(["13", 0])}),
            "ReadoutInvertImage", needs)


def drag_graph(points: str, reference_width: int = 64, reference_height: int = 64) -> dict:
    return api_graph(**{"9": head_node("correspondence"), "10": image_node(reference_width, reference_height),
                        "11": node("ReadoutDragTarget", correspondence_head=["9", 0], points=points, drag_weight=1.0,
                                   start_percent=0.0, end_percent=1.0, reference_image=["10", 0]),
                        "12": guided_sampler(["11", 0]), **decoded(["12", 0])})


def test_deeply_nested_points_are_refused_as_bad_json():
    refused(drag_graph("[" * 100_000 + "]" * 100_000), "ReadoutDragTarget",
            r"points: the JSON is nested too deeply to be point pairs; expected \[\{\"source\"")


@pytest.mark.every_comfyui
def test_nan_weight_from_the_api_passes_comfyui_validation_and_is_refused_by_the_node():
    refused(spatial_graph(pose_target(weight=float("nan"))), "ReadoutTarget",
            r"weight: got nan, not a number; send a finite value")
    drag = drag_graph(POINTS)
    drag["11"]["inputs"]["drag_weight"] = float("nan")
    refused(drag, "ReadoutDragTarget", r"drag_weight: got nan")
    sampler = spatial_graph(pose_target())
    sampler["12"]["inputs"]["cfg"] = float("nan")
    refused(sampler, "ReadoutGuidedKSampler", r"cfg: got nan")


def test_nonfinite_target_map_or_mask_is_refused(bed):
    broken = torch.full((1, 64, 64, 3), float("nan"))
    with pytest.raises(ValueError, match=r"target_image: 12288 of its 12288 values are NaN or infinite; connect a "
                                         "finite map"):
        bed.target(image=broken)
    readout = call_node("ExtractReadout", model=bed.model, vae=bed.vae, head=bed.head, timestep=-1, seed=0,
                        image=torch.rand(1, 64, 64, 3), clip=bed.clip)[1]
    infinite = dataclasses.replace(readout, tensor=readout.tensor * float("inf"))
    with pytest.raises(ValueError, match="target_readout: .* NaN or infinite"):
        call_node("ReadoutTarget", head=bed.head, weight=1.0, start_percent=0.0, end_percent=1.0,
                  target_readout=infinite)
    with pytest.raises(ValueError, match="mask: 1 of its 4096 values are NaN or infinite"):
        mask = torch.ones(1, 64, 64)
        mask[0, 3, 3] = float("nan")
        bed.target(mask=mask)


def test_head_file_with_nan_weights_is_refused_with_a_short_error_type(heads_folder):
    files = pack_module("readout.heads.files")
    config, weights = files.load_head_file(str(heads_folder / "pose.safetensors"))
    name = sorted(weights)[0]
    weights = {**weights, name: torch.full_like(weights[name], float("nan"))}
    files.save_head_safetensors(str(heads_folder / "pose.safetensors"), config, weights)
    error = refused(spatial_graph(pose_target()) | {"9": node("LoadReadoutHead", head_name="pose.safetensors")},
                    "LoadReadoutHead", rf"pose.safetensors: weights hold NaN or infinite values.*retrain the head or "
                                       rf"download it again\n  broken weights: {re.escape(name)}",
                    exception_type="readout_guidance.HeadFileError")
    assert os.sep not in error["exception_type"]


def test_cfg_one_with_the_uncond_loss_branch_guides_the_uncond_half(bed):
    guidance = bed.target()
    plain = bed.ksampler(bed.model, cfg=1.0)
    run = bed.guided_run(guidance, cfg=1.0, loss_branch="uncond")
    samples = run["result"][0]["samples"]
    assert not torch.equal(samples, plain)
    assert bed.loss(guidance, samples) < 0.9 * bed.loss(guidance, plain)
    report = run["ui"]["text"][0]
    assert "WARNING" not in report and f"guided {bed.steps} model evaluation(s)" in report


class ProgressText:
    """PromptServer.instance's text-on-a-node message, recorded."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send_progress_text(self, text: str, node_id: str, sid=None) -> None:
        self.sent.append((text, node_id))


@pytest.mark.every_comfyui
def test_a_loss_branch_the_sampler_never_runs_is_shown_on_the_sampler_node(monkeypatch):
    import server

    shown = ProgressText()
    monkeypatch.setattr(server.PromptServer, "instance", shown, raising=False)
    prompt = spatial_graph(pose_target(), **{
        "12": node("ApplyReadoutGuidance", model=["1", 0], guidance=["11", 0], loss_branch="uncond"),
        "13": node("BasicGuider", model=["12", 0], conditioning=["2", 0]),
        "14": node("KSamplerSelect", sampler_name="euler"),
        "15": node("BasicScheduler", model=["12", 0], scheduler="normal", steps=2, denoise=1.0),
        "16": node("RandomNoise", noise_seed=1),
        "17": node("SamplerCustomAdvanced", noise=["16", 0], guider=["13", 0], sampler=["14", 0], sigmas=["15", 0],
                   latent_image=["4", 0]),
        **decoded(["17", 0])})
    result = run_prompt(prompt)
    assert result.success, result.error_text()
    assert [node_id for _, node_id in shown.sent] == ["17"]
    assert re.search(r"WARNING: pose \(.*\): at 2 model evaluation\(s\) the sampler ran no uncond CFG half .* set "
                     "loss_branch to cond", shown.sent[0][0])


def test_empty_window_is_reported_on_the_sampler_node(bed):
    run = bed.guided_run(call_node("ReadoutTarget", head=bed.head, weight=1.0, start_percent=0.5, end_percent=0.5,
                                   target_image=bed.unit_map(bed.target_map))[0], sampler="euler")
    assert "no model evaluation fell in its window (start_percent 0.5 to end_percent 0.5): widen it" in \
        run["ui"]["text"][0]


def test_mask_or_reference_image_of_another_aspect_is_refused_before_sampling():
    mask = node("SolidMask", value=1.0, width=64, height=32)
    refused(spatial_graph(pose_target(mask=["20", 0]), **{"20": mask}), "ReadoutGuidedKSampler",
            r"mask: it is 64x32, another aspect ratio than the 64x64 px latent, and would be stretched to it; crop or "
            "pad it")
    refused(drag_graph(POINTS, reference_width=128, reference_height=64), "ReadoutGuidedKSampler",
            r"reference_image: it is 128x64, another aspect ratio than the 64x64 px latent")


def test_mask_of_the_latent_aspect_at_another_size_is_resized():
    mask = node("SolidMask", value=1.0, width=96, height=96)
    result = run_prompt(spatial_graph(pose_target(mask=["20", 0]), **{"20": mask}))
    assert result.success, result.error_text()


def head_info_graph(name: str) -> dict:
    return {"1": node("LoadReadoutHead", head_name=name), "2": node("PreviewAny", source=["1", 1])}


def test_head_file_rewritten_under_the_same_name_is_loaded_again(heads_folder):
    executor = prompt_executor()
    first = run_prompt(head_info_graph("pose.safetensors"), executor)
    assert "pose head" in first.outputs["1"]["text"][0]
    shutil.copy(heads_folder / "depth.safetensors", heads_folder / "pose.safetensors")
    second = run_prompt(head_info_graph("pose.safetensors"), executor)
    assert "depth head" in second.outputs["1"]["text"][0]
    third = run_prompt(head_info_graph("pose.safetensors"), executor)
    assert "1" not in third.outputs or "depth head" in third.outputs["1"]["text"][0]


@pytest.mark.every_comfyui
def test_errors_of_the_pack_have_short_type_names():
    errors = [pack_module("readout.heads.files").HeadFileError, pack_module("readout.heads.files").HeadModelMismatch,
              pack_module("readout.backbones.base").UnsupportedModel, pack_module("readout.train.data").DataError]
    assert {error.__module__ for error in errors} == {"readout_guidance"}
    assert all(issubclass(error, ValueError) for error in errors)
