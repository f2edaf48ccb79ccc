"""`python -m world.heads`: train the world's readout heads with the pack's own trainer (`python -m readout.train`)
on rendered scenes and their ground truth, and store them compactly in world/weights/.

The world UNet's features repeat each narrow channel WIDEN times (side by side), the world Z-Image's and
Qwen-Image-Edit's repeat their narrow model's channels TILES times (one copy after another), so a head's input weights
matter only summed over each group of copies: the stored form keeps those sums, and `expand_head_file` gives back a
head that computes exactly the same readouts on the world model."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from world import paths
from world.unet import WIDEN

GROUPED_INPUTS = (".conv1.weight", ".shortcut.weight", ".emb_layers.weight")
TILED_INPUTS = (".conv1.weight", ".shortcut.weight")
"""The world Z-Image's tiled inputs: the feature channels (its time embedding is not tiled)."""
TILED_WITH_EMBEDDING = TILED_INPUTS + (".emb_layers.weight",)
"""The world Qwen-Image's: its time embedding is residual-wide, so tiled too."""
TILED_INPUTS_KEY = "world_tiled_inputs"
NARROW_KEY = "world_narrow"
TILES_KEY = "world_tiles"
HEAD_RECIPES = {
    "depth": {"examples": 128, "steps": 150, "batch": 8, "lr": 1e-3},
    "edge": {"examples": 128, "steps": 150, "batch": 8, "lr": 1e-3},
    "correspondence": {"examples": 96, "steps": 80, "batch": 4, "lr": 1e-3},
    "appearance": {"examples": 64, "steps": 40, "batch": 4, "lr": 1e-3},
}
"""Sized for about 20 minutes on 2 CPU cores in all (each step runs the 320-channel world UNet on every image)."""
ZIMAGE_RECIPES = {
    **{kind: {"examples": 64, "steps": 60, "batch": 4, "lr": 1e-3} for kind in ("depth", "edge")},
    "correspondence": {"examples": 64, "steps": 60, "batch": 4, "lr": 1e-3},
    "appearance": {"examples": 48, "steps": 30, "batch": 4, "lr": 1e-3},
}
"""Shorter: each step runs the 1.3B-parameter world Z-Image (at Z-Image's own width), or the 1B-parameter world
Qwen-Image-Edit, on every image."""
TRAIN_OPTIONS = ["--resolution", "128", "--projection-dim", "128", "--val-fraction", "0.1", "--val-every", "50",
                 "--checkpoint-every", "100000"]


def compress_head_file(source: str, target: str, tiles: int = 0, tiled_inputs: tuple[str, ...] = TILED_INPUTS) -> None:
    """Sum a world head's input weights over each group of repeated channels (fp16): WIDEN side by side (the SD1.5
    world), or `tiles` copies one after another (the world Z-Image and Qwen-Image: the `tiled_inputs`)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(source, framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    for name, value in tensors.items():
        shape = value.shape
        if tiles and name.endswith(tiled_inputs):
            tensors[name] = value.float().reshape(shape[0], tiles, shape[1] // tiles, *shape[2:]).sum(1)
        elif not tiles and name.endswith(GROUPED_INPUTS):
            tensors[name] = value.float().reshape(shape[0], shape[1] // WIDEN, WIDEN, *shape[2:]).sum(2)
    grouping = {TILES_KEY: str(tiles), TILED_INPUTS_KEY: ",".join(tiled_inputs)} if tiles else {NARROW_KEY: str(WIDEN)}
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, target, metadata={**metadata, **grouping})


def store_head_file(source: str, target: str) -> None:
    """A head as it is committed: fp16."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(source, framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k).half().contiguous() for k in handle.keys()}
    save_file(tensors, target, metadata=metadata)


def expand_head_file(source: str, target: str, extra_metadata: dict[str, str] | None = None) -> None:
    """The loadable head of a compressed world head: each summed weight spread evenly over its copies."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(source, framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {k: handle.get_tensor(k).float() for k in handle.keys()}
    widen, tiles = int(metadata.pop(NARROW_KEY, 1)), int(metadata.pop(TILES_KEY, 0))
    tiled_inputs = tuple(metadata.pop(TILED_INPUTS_KEY, ",".join(TILED_INPUTS)).split(","))
    for name, value in tensors.items():
        if tiles and name.endswith(tiled_inputs):
            tensors[name] = value.repeat(1, tiles, *[1] * (value.dim() - 2)) / tiles
        elif name.endswith(GROUPED_INPUTS):
            tensors[name] = value.repeat_interleave(widen, 1) / widen
    save_file({k: v.contiguous() for k, v in tensors.items()}, target, metadata={**metadata, **(extra_metadata or {})})


def _data_options(kind: str, folder: str, count: int) -> list[str]:
    from world.datasets import write_pairs, write_spatial, write_triplets

    if kind in ("depth", "edge"):
        images, targets = write_spatial(folder, kind, count)
        return ["--images", images, "--targets", targets]
    if kind == "correspondence":
        return ["--pairs", write_pairs(folder, count)]
    return ["--triplets", write_triplets(folder, count)]


def model_options(family: str, checkpoint: str | None = None) -> list[str]:
    """The trainer's options that load the world model of a family from the test bed's shared models folder."""
    from testbed import MODELS_DIR as models

    if family == "sd15":
        return ["--checkpoint", checkpoint or os.path.join(models, "checkpoints", paths.CHECKPOINT)]
    diffusion_model = {"zimage": paths.ZIMAGE_DIFFUSION_MODEL, "qwen_image": paths.QWEN_IMAGE_DIFFUSION_MODEL}.get(
        family, paths.FLUX_DIFFUSION_MODEL)
    return ["--diffusion-model", os.path.join(models, "diffusion_models", diffusion_model),
            "--text-encoder", os.path.join(models, "text_encoders", paths.CLIP_L), "--clip-type", "stable_diffusion",
            "--vae", os.path.join(models, "vae", paths.FLUX_VAE)]


def train_head(kind: str, comfy: str, model: list[str], work: str, scale: float = 1.0, family: str = "sd15") -> dict:
    """Train one head with the pack's trainer; store it (compressed on the widened SD1.5 world model and the tiled
    world Z-Image); return its losses and time."""
    recipe = (HEAD_RECIPES if family in ("sd15", "flux") else ZIMAGE_RECIPES)[kind]
    folder = os.path.join(work, family, kind)
    output = os.path.join(folder, paths.head_name(kind, family))
    steps = max(2, int(recipe["steps"] * scale))
    trainer = "world.qwen_image_head" if family == "qwen_image" else "readout.train"
    command = [sys.executable, "-m", trainer, "--comfyui", comfy, *model, "--kind", kind, "--output", output,
               "--steps", str(steps), "--lr", str(recipe["lr"]), "--batch-size", str(recipe["batch"]), *TRAIN_OPTIONS,
               *_data_options(kind, folder, max(16, int(recipe["examples"] * scale)))]
    started = time.time()
    subprocess.run(command, cwd=paths.REPO, check=True)
    state = torch.load(output.replace(".safetensors", ".state.pt"), weights_only=True)
    stored = os.path.join(paths.WEIGHTS_DIR, paths.head_name(kind, family))
    if family == "sd15":
        compress_head_file(output, stored)
    elif family == "zimage":
        from world.zimage import TILES

        compress_head_file(output, stored, TILES)
    elif family == "qwen_image":
        from world.qwen_image import TILES as QWEN_IMAGE_TILES

        compress_head_file(output, stored, QWEN_IMAGE_TILES, TILED_WITH_EMBEDDING)
    else:
        store_head_file(output, stored)
    return {"kind": kind, "family": family, "steps": steps, "seconds": round(time.time() - started),
            "val_losses": state.get("val_losses"), "train_loss_last": (state.get("train_losses") or [None])[-1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", choices=("sd15", "flux", "zimage", "qwen_image"), default="sd15",
                        help="the world model whose heads to train: the SD1.5 checkpoint, the world's Flux, its "
                             "Z-Image or its Qwen-Image-Edit (ComfyUI 0.33 and newer load the Flux: set COMFYUI_PATH)")
    parser.add_argument("--checkpoint", help="the assembled world checkpoint (default: the test bed's)")
    parser.add_argument("--work", default=os.path.join(paths.REPO, "output", "world_heads"),
                        help="folder for the rendered data and the trainer's files")
    parser.add_argument("--kinds", nargs="+", default=list(paths.HEAD_KINDS))
    parser.add_argument("--scale", type=float, default=1.0, help="share of the steps and examples (tests)")
    args = parser.parse_args(argv)
    comfy = paths.import_comfyui()
    if args.family in ("zimage", "qwen_image"):
        from testbed import MODELS_DIR
        from world.assemble import write_world_models

        write_world_models(MODELS_DIR, zimage=args.family == "zimage", qwen_image=args.family == "qwen_image")
    model = model_options(args.family, args.checkpoint)
    log = []
    for kind in args.kinds:
        log.append(train_head(kind, comfy, model, args.work, args.scale, args.family))
        print(f"[world] head {json.dumps(log[-1])}", flush=True)
    if args.scale == 1.0:
        path = os.path.join(paths.WEIGHTS_DIR, "heads_log.json")
        earlier = []
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                earlier = [entry for entry in json.load(f) if (entry.get("family", "sd15"), entry["kind"])
                           not in {(args.family, kind) for kind in args.kinds}]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(earlier + log, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
