"""What an official-layout depth head keeps for the guided pass's backward, with and without per-layer checkpointing.

    .venv/bin/python -m bench.head_memory

For SD1.5 at 512 px (64x64 latent) and SDXL at 1024 px (128x128), batch 1, float32: the bytes autograd saves
during the head's forward, and the peak resident memory that the forward and backward add (each in a fresh
process, CPU, after a small warm-up so that library code and the weights' gradients are already resident), against
the pack's declared estimate (readout/guidance/memory.py). Prints ratios; never fails.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

FAMILIES = {"sd15": ((1280,) * 6 + (640,) * 3 + (320,) * 3, 64, (8, 16, 32, 64)),
            "sdxl": ((1280,) * 3 + (640,) * 3 + (320,) * 3, 128, (32, 64, 128))}
"""Decoder widths, latent side, and the sides of the decoder's stages (three layers each)."""


def resident_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1]) * 1024


def measure(family: str, checkpointed: bool) -> dict:
    """Saved bytes and added peak resident memory of one forward and backward."""
    import torch

    from readout.heads.architecture import HeadConfig, ReadoutHead

    dims, side, stages = FAMILIES[family]
    head = ReadoutHead(HeadConfig(kind="depth", family=family, dims=dims, use_output_head=True))
    sizes = [stages[index // 3] for index in range(len(dims))]
    emb = torch.randn(1, 1280)
    warm = [torch.randn(1, dim, size // 8, size // 8, requires_grad=True) for dim, size in zip(dims, sizes)]
    head(warm, emb, output_size=(side // 8, side // 8), checkpoint_layers=checkpointed).square().mean().backward()
    head.zero_grad(set_to_none=False)
    features = [torch.randn(1, dim, size, size, requires_grad=True) for dim, size in zip(dims, sizes)]
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    base = resident_bytes("VmRSS:")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        readout = head(features, emb, output_size=(side, side), checkpoint_layers=checkpointed)
    readout.square().mean().backward()
    return {"saved_bytes": sum(saved), "peak_added_bytes": resident_bytes("VmHWM:") - base}


def main() -> None:
    if len(sys.argv) == 3:
        print("RESULT " + json.dumps(measure(sys.argv[1], sys.argv[2] == "checkpointed")), flush=True)
        return
    from readout.guidance.memory import head_pass_bytes
    from readout.heads.architecture import HeadConfig

    print(f"{'family':8} {'layers':14} {'saved MiB':>10} {'peak added MiB':>15} {'declared MiB':>13}")
    for family, (dims, side, _) in FAMILIES.items():
        declared = head_pass_bytes(HeadConfig(kind="depth", family=family, dims=dims, use_output_head=True), 1, side,
                                   side)
        rows = {}
        for mode in ("plain", "checkpointed"):
            out = subprocess.run([sys.executable, "-m", "bench.head_memory", family, mode], capture_output=True,
                                 text=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, check=True)
            rows[mode] = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])
            print(f"{family:8} {mode:14} {rows[mode]['saved_bytes'] / 2**20:10.0f} "
                  f"{rows[mode]['peak_added_bytes'] / 2**20:15.0f} {declared / 2**20:13.0f}")
        for key in ("saved_bytes", "peak_added_bytes"):
            print(f"  {family} checkpointed / plain, {key}: {rows['checkpointed'][key] / rows['plain'][key]:.2f}")


if __name__ == "__main__":
    main()
