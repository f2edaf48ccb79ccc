"""Guidance on ComfyUI's GPU memory paths, emulated on the CPU (tests/gpu_emulation.py): the guided result must be the
one of the plain CPU path, or the run must stop with a message that names the cause and the fix, the model left
as it was."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gpu_emulation import (RotatingCastBuffer, StrictDevices, attention_kernel, cached_under_inference_mode,
                           cast_every_layer, use_attention_kernel)
from helpers import (TINY_CKPT, TINY_LORA, SpatialBed, assert_model_untouched, call_node, model_state, pack_module)
from testbed import REPO
from tiny.models import tiny_head_name

STEPS = 3
SAME_RESULT = {"rtol": 1e-4, "atol": 1e-4}
"""Guided results on an emulated path against the plain path: both compute the same in float32 (measured max
difference 0 for the casts; below 1e-5 for attention and partial loads, other GEMM batchings)."""


@pytest.fixture(scope="module")
def bed() -> SpatialBed:
    return SpatialBed(steps=STEPS)


@pytest.fixture(scope="module")
def reference(bed) -> torch.Tensor:
    """The guided result on the plain CPU path."""
    return bed.guided(bed.target())[0]


def fresh_model():
    return call_node("CheckpointLoaderSimple", ckpt_name=TINY_CKPT)[0]


@pytest.mark.every_comfyui
@pytest.mark.parametrize("cast", ["cached_under_inference_mode", "rotating_cast_buffer"])
def test_weights_through_comfyui_casts_give_the_plain_gradient(bed, reference, monkeypatch, cast):
    """Dynamic VRAM hands layers a cast copy cached under inference mode (made here by an unguided KSampler first),
    offloaded layers views of a cast buffer that the layer after next overwrites; the backward must see neither."""
    model = fresh_model()
    cast_every_layer(monkeypatch, model, {"cached_under_inference_mode": cached_under_inference_mode,
                                          "rotating_cast_buffer": RotatingCastBuffer()}[cast])
    bed.ksampler(model)
    before = model_state(model)
    guided = bed.guided(bed.target(), model=model)[0]
    torch.testing.assert_close(guided, reference, **SAME_RESULT)
    assert_model_untouched(model, before)


def test_aliased_weights_keep_comfyui_attributes():
    """0.33's dynamic loader sizes transfers by `weight._model_dtype`: the grad pass's aliases must carry it."""
    import comfy.ops

    grad_pass = pack_module("readout.guidance.grad_pass")
    with torch.inference_mode():
        layer = comfy.ops.disable_weight_init.Linear(4, 4)
        layer.weight = torch.nn.Parameter(torch.ones(4, 4), requires_grad=False)
    layer.weight._model_dtype = torch.float16
    with grad_pass.autograd_safe_weights(layer):
        assert not layer.weight.is_inference()
        assert layer.weight._model_dtype is torch.float16
    assert layer.weight.is_inference()


def test_partial_load_with_a_lora_on_the_fly_gives_the_full_load_gradient(bed, monkeypatch):
    """A partially loaded UNet computes its LoRA'd weights in each layer's weight function (LowVramPatch)."""
    import comfy.model_management as mm

    lora = call_node("LoraLoaderModelOnly", model=fresh_model(), lora_name=TINY_LORA, strength_model=1.0)[0]
    full = bed.guided(bed.target(), model=lora)[0]
    mm.unload_all_models()
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)
    monkeypatch.setattr(mm, "is_device_cpu", lambda device: False)
    free = 1.6 * 1024 ** 3
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: (free, free) if torch_free_too else free)
    monkeypatch.setattr(mm, "minimum_inference_memory", lambda: 1.5 * 1024 ** 3)
    partial = bed.guided(bed.target(), model=lora)[0]
    assert lora.model.model_lowvram and lora.model.lowvram_patch_counter > 0, "no layer took its LoRA on the fly"
    monkeypatch.undo()
    mm.unload_all_models()
    torch.testing.assert_close(partial, full, **SAME_RESULT)


def test_guidance_declares_the_memory_of_its_pass(bed, monkeypatch):
    """ComfyUI loads or offloads for the memory it is told: guided sampling asks for its heads' and backward's."""
    import comfy.model_management as mm

    asked = []
    load = mm.load_models_gpu

    def recording(models, memory_required=0, *args, **kwargs):
        asked.append(memory_required)
        return load(models, memory_required, *args, **kwargs)

    monkeypatch.setattr(mm, "load_models_gpu", recording)
    model = bed.model
    bed.ksampler(model)
    bed.guided(bed.target(), loss_branch="cond")
    bed.guided(bed.target(), loss_branch="both")
    plain, cond, both = asked[0], asked[1], asked[2]
    memory = pack_module("readout.guidance.memory")
    head_bytes = memory.head_pass_bytes(bed.head.config, 1, 8, 8)
    assert cond >= plain + 2 * head_bytes, "the cond branch's heads (two prompts' worth) were not declared"
    assert both > cond
    assert "memory_required" not in model.model.__dict__, "the model kept the raised estimate"


def test_a_partially_loaded_head_reads_on_the_features_device(bed):
    """ComfyUI's partial load moves a head's leaf layers only (here to the meta device): the weights it leaves behind
    (ConvNorm's, the mixing weights) must follow the features, which a CUDA device insists on."""
    import folder_paths

    head_model = pack_module("readout.heads.head_model")
    head = head_model.load_head_model(folder_paths.get_full_path_or_raise("readout_heads", tiny_head_name("pose")))
    head.patcher.patch_model(device_to=torch.device("meta"), lowvram_model_memory=1e12, load_weights=True)
    left = [name for name, param in head.module.named_parameters() if param.device.type != "meta"]
    assert left, "the partial load moved every weight: nothing to emulate"
    features = [torch.zeros(1, dim, 8, 8, device="meta") for dim in head.config.dims]
    emb = torch.zeros(1, head.config.emb_dim, device="meta")
    with StrictDevices():
        readout = head.read(features, emb)
    assert readout.device.type == "meta" and readout.shape[1] == 3


@pytest.mark.every_comfyui
@pytest.mark.parametrize("kind", ["no_backward", "no_grad"])
def test_attention_kernels_without_a_backward_guide_as_the_default_one(bed, reference, monkeypatch, kind):
    """--use-flash-attention's kernel raises in the backward, --use-sage-attention's returns no gradient history:
    the grad pass must run its attention on a kernel with a backward."""
    use_attention_kernel(monkeypatch, attention_kernel(kind))
    before = model_state(bed.model)
    guided = bed.guided(bed.target())[0]
    torch.testing.assert_close(guided, reference, **SAME_RESULT)
    assert_model_untouched(bed.model, before)


def test_an_attention_patch_without_gradient_stops_with_its_name(bed):
    """A node's attention override that calls its own gradient-less kernel cannot be routed around: a clear error."""
    def sage_everywhere(func, q, k, v, *args, **kwargs):
        with torch.no_grad():
            return func(q, k, v, *args, **kwargs)

    model = bed.model.clone()
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = sage_everywhere
    before = model_state(model)
    errors = pack_module("readout.guidance.grad_pass")
    with pytest.raises(errors.AttentionWithoutGradient, match="sage_everywhere.*remove that attention patch"):
        bed.guided(bed.target(), model=model)
    assert_model_untouched(model, before)


def test_free_memory_changing_between_forward_and_recompute(bed, reference, monkeypatch):
    """Sub-quadratic attention (the CPU's default) sizes its chunks from the free memory: the checkpoint's recompute
    in the backward must not depend on it."""
    import comfy.model_management as mm

    calls = iter(range(10 ** 9))
    tiny, plenty = 64 * 1024, 64 * 1024 ** 3

    def changing(dev=None, torch_free_too=False):
        free = tiny if next(calls) % 2 else plenty
        return (free, free) if torch_free_too else free

    monkeypatch.setattr(mm, "get_free_memory", changing)
    guided = bed.guided(bed.target())[0]
    monkeypatch.undo()
    torch.testing.assert_close(guided, reference, **SAME_RESULT)


def test_out_of_memory_in_the_guided_pass_names_what_to_lower(bed, monkeypatch):
    rule = pack_module("readout.guidance.rules.fast").FastRule
    memory = pack_module("readout.guidance.memory")

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(rule, "backprop", out_of_memory)
    model = bed.model
    before = model_state(model)
    with pytest.raises(memory.GuidanceOutOfMemory, match="loss_branch cond.*lower the resolution") as error:
        bed.guided(bed.target())
    assert isinstance(error.value, torch.OutOfMemoryError), "ComfyUI frees its models only for an OutOfMemoryError"
    assert_model_untouched(model, before)


def test_the_gpu_check_runs_its_cpu_launches():
    """The GPU check (bench/gpu_check.py) as a GPU machine runs it, on two CPU launches: real servers, a table, and
    the guided latent moving alike under both attention kernels."""
    out = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--cpu", "--steps", "1", "--launches", "default",
                          "split_attention"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [line.split()[0] for line in out.stdout.splitlines()[2:4]]
    assert rows == ["default", "split_attention"], out.stdout
    assert "least 0.99: met" in out.stdout


def test_float32_that_autocast_would_ignore_is_refused_by_name(bed, reference, monkeypatch):
    """CPU autocast cannot raise a float16 model to float32 (torch warns and disables it): compute_dtype float32 would
    silently do nothing there, so it is refused; on a float32 model it is what the pass computes in anyway."""
    torch.testing.assert_close(bed.guided(bed.target(), compute_dtype="float32")[0], reference, **SAME_RESULT)
    model = fresh_model()
    monkeypatch.setattr(model.model, "manual_cast_dtype", torch.float16)
    before = model_state(model)
    with pytest.raises(ValueError, match=r"compute_dtype float32: .*cpu.*--fp32-unet"):
        bed.guided(bed.target(), model=model, compute_dtype="float32")
    assert_model_untouched(model, before)


def test_bfloat16_on_a_gpu_without_it_is_refused_by_name(bed, monkeypatch):
    """torch's CUDA autocast raises a bare RuntimeError for bfloat16 on cards before Ampere; the run is refused first,
    naming the setting and what to choose instead."""
    precision = pack_module("readout.guidance.precision")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert not precision.device_supports_bfloat16(torch.device("cuda", 0))
    assert precision.device_supports_bfloat16(torch.device("cpu"))
    monkeypatch.setattr(precision, "device_supports_bfloat16", lambda device: False)
    before = model_state(bed.model)
    with pytest.raises(ValueError, match=r"compute_dtype bfloat16: .*auto or float16"):
        bed.guided(bed.target(), compute_dtype="bfloat16")
    assert_model_untouched(bed.model, before)
