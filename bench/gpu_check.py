"""The GPU check: guided against unguided sampling on real ComfyUI servers, one per launch configuration (dynamic VRAM
on and off, --lowvram, fp16 and bf16 weights, attention kernels), with seconds per step, peak memory and whether
each launch's guidance moves the latent as the default launch's does.

    python -m bench.gpu_check --model sd15 --size 512        # on a GPU machine (writes a random-weight checkpoint)
    python -m bench.gpu_check --model sdxl --size 1024
    python -m bench.gpu_check --cpu                          # the same check on the CPU, tiny model, CPU launches

Run it with the Python that runs ComfyUI (COMFYUI_PATH, or this repo's test bed). sd15/sdxl are ComfyUI's real UNet
configs with random weights next to the tiny checkpoints' text encoders and VAE, and a random head of the real
decoder widths (cost and gradients do not depend on weight values). Kernels that are not installed are skipped.
Exits 1 when a launch fails or guides the latent differently (cosine of guided - unguided below AGREEMENT).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from testbed import MODELS_DIR, comfyui_path
from testbed.server import ComfyServer, PromptFailed, start_server, stop_server
from tiny.models import TINY_CHECKPOINT, tiny_head_name

GPU_LAUNCHES = {
    "default": (),
    "no_dynamic_vram": ("--disable-dynamic-vram",),
    "lowvram": ("--disable-dynamic-vram", "--lowvram"),
    "novram": ("--novram",),
    "fp16_unet": ("--fp16-unet",),
    "bf16_unet": ("--bf16-unet",),
    "pytorch_attention": ("--use-pytorch-cross-attention",),
    "sage_attention": ("--use-sage-attention",),
    "flash_attention": ("--use-flash-attention",),
}
"""ComfyUI launch flags per configuration (0.3.75 lacks the dynamic VRAM flags: those rows fail at start-up there)."""
CPU_LAUNCHES = {
    "default": ("--cpu",),
    "split_attention": ("--cpu", "--use-split-cross-attention"),
    "pytorch_attention": ("--cpu", "--use-pytorch-cross-attention"),
}
KERNEL_PACKAGES = {"sage_attention": "sageattention", "flash_attention": "flash_attn"}
AGREEMENT = 0.99
"""Least cosine between a launch's and the default launch's guided - unguided latent."""


def check_files(model: str) -> tuple[str, str]:
    """(checkpoint, head file) names for the model, written into the test bed's models folder when missing."""
    if model == "tiny":
        return TINY_CHECKPOINT, tiny_head_name("depth")
    ckpt, head = f"readout_check_{model}.safetensors", f"readout_check_{model}_depth.safetensors"
    if not os.path.exists(os.path.join(MODELS_DIR, "checkpoints", ckpt)):
        subprocess.run([sys.executable, "-m", "bench.real_config_files", model, ckpt, head], check=True)
    return ckpt, head


def prompt(ckpt: str, head: str, size: int, steps: int, seed: int, guided: bool, prefix: str) -> dict:
    """An API prompt: the checkpoint, a solid depth target, KSampler (Readout Guidance) or KSampler, Save Latent."""
    nodes = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a room with a window", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
    }
    sample = {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 5.0, "sampler_name": "euler",
              "scheduler": "normal", "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
              "denoise": 1.0}
    if guided:
        nodes["5"] = {"class_type": "LoadReadoutHead", "inputs": {"head_name": head}}
        nodes["6"] = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                              "color": 0x808080}}
        nodes["7"] = {"class_type": "ReadoutTarget", "inputs": {"head": ["5", 0], "target_image": ["6", 0],
                                                                 "weight": 1.0, "start_percent": 0.0,
                                                                 "end_percent": 1.0}}
        nodes["8"] = {"class_type": "ReadoutGuidedKSampler", "inputs": {**sample, "guidance": ["7", 0]}}
    else:
        nodes["8"] = {"class_type": "KSampler", "inputs": sample}
    nodes["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": prefix}}
    return nodes


class PeakMemory:
    """Peak memory of the server process during one prompt: CUDA memory used by it (nvidia-smi, sampled), or its
    peak resident set on the CPU (reset through /proc)."""

    def __init__(self, pid: int, cuda: bool) -> None:
        self.pid, self.cuda, self.peak = pid, cuda, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            self._stop.set()
            self._thread.join()
        else:
            with open(f"/proc/{self.pid}/status") as f:
                line = next(l for l in f if l.startswith("VmHWM:"))
            self.peak = int(line.split()[1]) * 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout
            for row in out.splitlines():
                pid, used = (part.strip() for part in row.split(","))
                if pid == str(self.pid):
                    self.peak = max(self.peak, int(used) * 2 ** 20)


def latent_of(server: ComfyServer, prefix: str) -> torch.Tensor:
    from safetensors.torch import load_file

    name = sorted(f for f in os.listdir(server.output_dir) if f.startswith(prefix) and f.endswith(".latent"))[-1]
    return load_file(os.path.join(server.output_dir, name))["latent_tensor"].float()


def run_launch(name: str, flags: tuple[str, ...], args, ckpt: str, head: str) -> dict:
    """Warm up, then time one unguided and one guided run on a fresh server with these flags."""
    out = tempfile.mkdtemp(prefix=f"gpu-check-{name}-")
    server = start_server(comfyui_path(), out, os.path.join(out, "server.log"), temp_dir=out, launch_args=flags)
    try:
        row = {"launch": name}
        for guided in (False, True):
            kind = "guided" if guided else "unguided"
            server.run(prompt(ckpt, head, args.size, args.steps, args.seed + 1, guided, f"warm_{kind}"), args.timeout)
            with PeakMemory(server.process.pid, not args.cpu) as memory:
                start = time.perf_counter()
                server.run(prompt(ckpt, head, args.size, args.steps, args.seed, guided, kind), args.timeout)
                row[f"{kind}_s_per_step"] = (time.perf_counter() - start) / args.steps
            row[f"{kind}_peak"] = memory.peak
            row[kind] = latent_of(server, kind)
        return row
    except (PromptFailed, RuntimeError) as error:
        return {"launch": name, "error": str(error).splitlines()[0][:200]}
    finally:
        stop_server(server)


def launches(args) -> dict[str, tuple[str, ...]]:
    table = CPU_LAUNCHES if args.cpu else GPU_LAUNCHES
    chosen = {name: flags for name, flags in table.items() if not args.launches or name in args.launches}
    return {name: flags for name, flags in chosen.items()
            if name not in KERNEL_PACKAGES or importlib.util.find_spec(KERNEL_PACKAGES[name]) is not None}


def agreement(row: dict, reference: dict) -> float:
    """Cosine between this launch's guided - unguided latent and the reference launch's."""
    delta, base = (row["guided"] - row["unguided"]).flatten(), (reference["guided"] - reference["unguided"]).flatten()
    return float(torch.nn.functional.cosine_similarity(delta, base, dim=0))


def report(rows: list[dict]) -> bool:
    """Print the table; whether every launch ran and agreed with the first."""
    reference = next((r for r in rows if "error" not in r), None)
    print(f"{'launch':20} {'unguided s/step':>16} {'guided s/step':>14} {'x time':>7} {'peak MiB':>9} "
          f"{'x memory':>9} {'agreement':>10}")
    ok = reference is not None
    for row in rows:
        if "error" in row:
            print(f"{row['launch']:20} failed: {row['error']}")
            ok = False
            continue
        cosine = agreement(row, reference)
        ok = ok and cosine >= AGREEMENT
        print(f"{row['launch']:20} {row['unguided_s_per_step']:16.3f} {row['guided_s_per_step']:14.3f} "
              f"{row['guided_s_per_step'] / row['unguided_s_per_step']:7.2f} {row['guided_peak'] / 2**20:9.0f} "
              f"{row['guided_peak'] / max(row['unguided_peak'], 1):9.2f} {cosine:10.4f}")
    print(f"agreement: cosine of guided - unguided with the first launch's, at least {AGREEMENT}: "
          f"{'met' if ok else 'NOT met'}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("tiny", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="CPU launches (what the test suite runs)")
    parser.add_argument("--launches", nargs="+", help="only these launch configurations")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per prompt")
    args = parser.parse_args()
    ckpt, head = check_files(args.model)
    print(f"model {args.model}, {args.size} px, {args.steps} euler steps, cfg 5, ComfyUI at {comfyui_path()}")
    rows = [run_launch(name, flags, args, ckpt, head) for name, flags in launches(args).items()]
    sys.exit(0 if report(rows) else 1)


if __name__ == "__main__":
    main()
