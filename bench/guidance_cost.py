"""Cost of readout guidance: time per step and peak memory, guided vs unguided, same model, seed, steps, sampler.

    .venv/bin/python -m bench.guidance_cost                       # tiny SD1.5 model on the CPU, 64 px
    .venv/bin/python -m bench.guidance_cost --model sd15 --size 512 --device cuda
    .venv/bin/python -m bench.guidance_cost --model sdxl --size 1024 --device cuda
    .venv/bin/python -m bench.guidance_cost --model tiny_flux       # tiny Flux (2 blocks; 3072 wide on 0.3.75), cfg 1
    .venv/bin/python -m bench.guidance_cost --model tiny_sd3        # tiny SD3.5-style MMDiT, cfg 4.5
    COMFYUI_PATH=.comfyui033/ComfyUI-0.33.0 .venv-comfyui033/bin/python -m bench.guidance_cost --model tiny_lumina2
                                                  # also tiny_flux2, tiny_qwen_image, tiny_krea2 (ComfyUI 0.33), cfg 1

Guided configurations take one guided pass a step (recurrence 1) except all_steps_two_passes (recurrence 2, what
auto takes at 8 steps or fewer). Each configuration runs in a fresh process so its peak memory is its own (CUDA: max allocated;
CPU: peak resident set). sd15/sdxl are UNets of ComfyUI's real configs with random weights
(cost does not depend on weight values). Prints ratios against the issue's targets; never fails on them.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from tiny.families import KREA2_TEXT_WIDTH, QWEN_TEXT_WIDTH, TINY_LUMINA2_CONFIG

TARGETS = {"per_guided_step": 2.2, "first_half_run": 1.7, "memory_with_checkpointing": 1.3}
SD15_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
             "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
             "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
             "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
             "use_temporal_attention": False, "use_temporal_resblock": False}
SDXL_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
             "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
             "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
             "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
             "use_temporal_attention": False, "use_temporal_resblock": False}
CONFIGS = {
    "unguided": None,
    "all_steps": {"end": 1.0, "checkpointing": True, "dtype": "auto", "branch": "cond"},
    "first_half": {"end": 0.5, "checkpointing": True, "dtype": "auto", "branch": "cond"},
    "all_steps_two_passes": {"end": 1.0, "checkpointing": True, "dtype": "auto", "branch": "cond", "recurrence": 2},
    "all_steps_no_checkpointing": {"end": 1.0, "checkpointing": False, "dtype": "auto", "branch": "cond"},
    "all_steps_fp16": {"end": 1.0, "checkpointing": True, "dtype": "float16", "branch": "cond"},
    "all_steps_bf16": {"end": 1.0, "checkpointing": True, "dtype": "bfloat16", "branch": "cond"},
    "both_all_steps": {"end": 1.0, "checkpointing": True, "dtype": "auto", "branch": "both"},
    "both_first_half": {"end": 0.5, "checkpointing": True, "dtype": "auto", "branch": "both"},
    "both_all_steps_no_checkpointing": {"end": 1.0, "checkpointing": False, "dtype": "auto", "branch": "both"},
    "official_all_steps": {"end": 1.0, "checkpointing": True, "dtype": "auto", "branch": "cond", "rule": "official"},
    "official_first_half": {"end": 0.5, "checkpointing": True, "dtype": "auto", "branch": "cond", "rule": "official"},
}
"""Guided configurations: window end, gradient checkpointing, compute dtype, loss branch (cond, the default: the
loss on the conditional half, the other half runs without autograd; both: the official code's sum over the halves),
and rule (fast unless given; official: the official code's step, which always takes the loss over both halves)."""
OFFICIAL_VS_FAST = {"per guided step": ("official_all_steps", "all_steps", 1.7),
                    "per run (first-half window)": ("official_first_half", "first_half", None)}
"""(official config, fast config, target: fast at least this many times faster, or None) printed side by side."""


DIT_LOADERS = {"tiny_flux": ("readout_tiny_flux.safetensors", "stable_diffusion"),
               "tiny_sd3": ("readout_tiny_sd3.safetensors", "sd3"),
               "tiny_flux2": ("readout_tiny_flux2.safetensors", "stable_diffusion"),
               "tiny_lumina2": ("readout_tiny_lumina2.safetensors", TINY_LUMINA2_CONFIG["cap_feat_dim"]),
               "tiny_qwen_image": ("readout_tiny_qwen_image.safetensors", QWEN_TEXT_WIDTH),
               "tiny_krea2": ("readout_tiny_krea2.safetensors", KREA2_TEXT_WIDTH)}
"""The tiny DiTs (tiny/dit.py, tiny/families.py) by UNETLoader file and CLIPLoader type, or the text width of the
CONDITIONING built for those no tiny CLIP reads (as their tests do). They sample at their own CFG (Flux dev and the
distilled families of late 2026: 1, so only the conditional half runs; SD3.5: 4.5)."""
DIT_CFG = {"tiny_flux": 1.0, "tiny_sd3": 4.5, "tiny_flux2": 1.0, "tiny_lumina2": 1.0, "tiny_qwen_image": 1.0,
           "tiny_krea2": 1.0}
DIT_LATENT = {"tiny_flux2": "EmptyFlux2LatentImage"}
"""The empty-latent node of a DiT whose latent is not SD3's 16 channels at 1/8."""


def build(model_name: str, device: str):
    """(ModelPatcher, positive, negative, decoder dims) for the benchmark model."""
    import torch

    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models as sm
    from testbed.nodes import call_node
    from tiny.dit import TINY_DIT_CLIP_L
    from tiny.families import text_conditioning
    from tiny.models import TINY_CHECKPOINT
    from tiny.parts import init_weights

    if model_name in DIT_LOADERS:
        unet, text = DIT_LOADERS[model_name]
        model = call_node("UNETLoader", unet_name=unet, weight_dtype="default")[0]
        if isinstance(text, int):
            return model, text_conditioning("a photo", text), text_conditioning("", text)
        clip = call_node("CLIPLoader", clip_name=TINY_DIT_CLIP_L, type=text)[0]
        return model, call_node("CLIPTextEncode", text="a photo", clip=clip)[0], call_node(
            "CLIPTextEncode", text="", clip=clip)[0]
    if model_name == "tiny":
        model, clip = call_node("CheckpointLoaderSimple", ckpt_name=TINY_CHECKPOINT)[:2]
        pos = call_node("CLIPTextEncode", text="a photo", clip=clip)[0]
        neg = call_node("CLIPTextEncode", text="", clip=clip)[0]
        return model, pos, neg
    config_class, unet = (sm.SD15, SD15_UNET) if model_name == "sd15" else (sm.SDXL, SDXL_UNET)
    dtype = torch.float16 if device == "cuda" else torch.float32
    with torch.inference_mode(False):
        config = config_class(dict(unet))
        config.set_inference_dtype(dtype, None)
        base = config.get_model({})
        init_weights(base.diffusion_model, 0)
        base.diffusion_model.to(dtype)
    model = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(), offload_device=mm.unet_offload_device())
    width = 768 if model_name == "sd15" else 2048
    extra = {} if model_name == "sd15" else {"pooled_output": torch.randn(1, 1280), "width": 1024, "height": 1024,
                                             "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024}
    pos = [[torch.randn(1, 77, width), dict(extra)]]
    neg = [[torch.randn(1, 77, width), dict(extra)]]
    return model, pos, neg


def run_one(args, name: str) -> dict:
    """Sample once with one configuration and report seconds per step and peak memory."""
    import resource

    import torch

    from testbed.bench_helpers import bootstrap, random_head
    from testbed.nodes import call_node

    bootstrap(args.device)
    import comfy.model_management as mm

    model, pos, neg = build(args.model, args.device)
    empty = DIT_LATENT.get(args.model, "EmptySD3LatentImage" if args.model in DIT_LOADERS else "EmptyLatentImage")
    latent = call_node(empty, width=args.size, height=args.size, batch_size=1)[0]
    config = CONFIGS[name]
    sample = dict(model=model, seed=1, steps=args.steps, cfg=DIT_CFG.get(args.model, 7.5), sampler_name="ddim",
                  scheduler="ddim_uniform",
                  positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    warm = dict(sample, steps=1)
    if config is None:
        call_node("KSampler", **warm)
        run = lambda: call_node("KSampler", **sample)  # noqa: E731
    else:
        head = random_head(model)
        target = torch.rand(1, args.size, args.size, 3)
        guidance = call_node("ReadoutTarget", head=head, weight=0.43, start_percent=0.0, end_percent=config["end"],
                             target_image=target)[0]
        options = dict(guidance=guidance, gradient_checkpointing=config["checkpointing"],
                       compute_dtype=config["dtype"], loss_branch=config["branch"], rule=config.get("rule", "fast"),
                       recurrence=config.get("recurrence", 1))
        call_node("ReadoutGuidedKSampler", **warm, **options)
        run = lambda: call_node("ReadoutGuidedKSampler", **sample, **options)  # noqa: E731
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if args.device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    mm.unload_all_models()
    return {"config": name, "seconds_per_step": seconds / args.steps, "peak_bytes": peak}


def supported(name: str, device: str) -> bool:
    import torch

    if name.endswith("fp16"):
        return device == "cuda"
    if name.endswith("bf16"):
        return device == "cpu" or torch.cuda.is_bf16_supported()
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15", "sdxl", *DIT_LOADERS), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="run only these configurations (unguided always runs)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args, args.one)), flush=True)
        return
    results = {}
    for name in CONFIGS:
        if name != "unguided" and name not in args.configs or not supported(name, args.device):
            continue
        cmd = [sys.executable, "-m", "bench.guidance_cost", "--model", args.model, "--device", args.device, "--size", str(args.size),
               "--steps", str(args.steps), "--one", name]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{out.stderr[-2000:]}")
            continue
        results[name] = json.loads(line[7:])
    report(args, results)


def report(args, results: dict) -> None:
    base = results["unguided"]
    print(f"\nmodel {args.model}, {args.size}x{args.size} px, {args.steps} ddim steps, cfg {DIT_CFG.get(args.model, 7.5)}, device {args.device}")
    print(f"{'configuration':32} {'s/step':>9} {'x time':>8} {'peak MiB':>10} {'x memory':>9}")
    for name, r in results.items():
        print(f"{name:32} {r['seconds_per_step']:9.3f} {r['seconds_per_step'] / base['seconds_per_step']:8.2f} "
              f"{r['peak_bytes'] / 2**20:10.0f} {r['peak_bytes'] / base['peak_bytes']:9.2f}")
    checks = [(f"{label} [{prefix.rstrip('_') or 'cond, default'}]", prefix + name, key, TARGETS[target])
              for prefix in ("", "both_")
              for label, name, key, target in (
                  ("per guided step (all_steps)", "all_steps", "seconds_per_step", "per_guided_step"),
                  ("per guided step, no checkpointing", "all_steps_no_checkpointing", "seconds_per_step",
                   "per_guided_step"),
                  ("whole run, first-half window", "first_half", "seconds_per_step", "first_half_run"),
                  ("peak memory with checkpointing", "all_steps", "peak_bytes", "memory_with_checkpointing"))]
    print("\ntargets:")
    for label, name, key, limit in checks:
        if name in results:
            ratio = results[name][key] / base[key]
            print(f"  {label:44} {ratio:5.2f}x (target <= {limit}x): {'met' if ratio <= limit else 'NOT met'}")
    print("\nrule official vs fast (the default), same run:")
    for label, (official, fast, target) in OFFICIAL_VS_FAST.items():
        if official in results and fast in results:
            ratio = results[official]["seconds_per_step"] / results[fast]["seconds_per_step"]
            verdict = "" if target is None else f" (target >= {target}x): {'met' if ratio >= target else 'NOT met'}"
            print(f"  {label:44} official takes {ratio:5.2f}x the time of fast{verdict}")


if __name__ == "__main__":
    main()
