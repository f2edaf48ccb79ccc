"""Which blocks a DiT head reads and how their tokens are normalized, measured on the learned world's Flux: for each
choice, a depth head trained with the pack's trainer (same data, steps and seeds), its held-out loss, and the
object-mask IoU its guidance gives on decoded pixels (world/detector.py) against the same seed unguided.

    COMFYUI_PATH=<0.33 bed> <its python> -m bench.dit_readout_choices [--seeds 16] [--train-seeds 2] [--only NAME ...]

Also prints each block's channel statistics: whether the world's Flux carries "massive activations" (channels far
above the rest, which DiTF zeroes on FLUX.1) that would motivate zeroing channels.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from testbed import REPO

MASSIVE_RATIO = 10.0
"""A channel is massive when its mean |activation| is this many times the median channel's."""
CHOICES = {
    "layernorm_quarters": ((1, 2, 3), "layernorm"),
    "raw_quarters": ((1, 2, 3), "raw"),
    "layernorm_zero_massive_quarters": ((1, 2, 3), "zero_massive"),
    "zero_massive_layernorm_quarters": ((1, 2, 3), "massive_zeroed_first"),
    "layernorm_all_blocks": ((0, 1, 2, 3), "layernorm"),
    "layernorm_middle_block": ((2,), "layernorm"),
    "layernorm_double_blocks": ((0, 1), "layernorm"),
    "layernorm_single_blocks": ((2, 3), "layernorm"),
}
"""name -> (indices into the world's Flux's 4 blocks: 2 double, 2 single; token normalization). The first is the
pack's default (a quarter, half and three quarters of the stack, LayerNorm per token)."""


def channel_statistics(world, ex, pack) -> dict:
    """Per block: mean |token| per channel over noised scene latents at t = 0.25, 0.5, 0.75; the top channels and
    their ratio to the median channel."""
    from world.scenes import random_scene

    model = world.model.model
    blocks = pack("readout.backbones.registry").FAMILIES["flux"].blocks(model.diffusion_model)
    sums: list[torch.Tensor | None] = [None] * len(blocks)
    text_tokens = []

    def hook_for(index: int):
        def hook(_layer, _inputs, output) -> None:
            tokens = output[0] if isinstance(output, tuple) else output[:, text_tokens[-1]:]
            value = tokens.detach().float().abs().mean((0, 1))
            sums[index] = value if sums[index] is None else sums[index] + value
        return hook

    handles = [model.diffusion_model.txt_in.register_forward_hook(lambda _m, _a, out: text_tokens.append(out.shape[1]))]
    handles += [block.register_forward_hook(hook_for(i)) for i, block in enumerate(blocks)]
    try:
        for seed in range(4):
            torch.manual_seed(seed)
            scene = random_scene(ex.EVAL_SCENE_BASE + 5 * 10**6 + seed)
            context = world.encode(scene.caption)
            with torch.inference_mode():
                latent = model.process_latent_in(world.vae.encode(torch.from_numpy(scene.image()).float()[None]))
                for t in (0.25, 0.5, 0.75):
                    sigma = torch.tensor([t])
                    noised = model.model_sampling.noise_scaling(sigma, torch.randn_like(latent), latent)
                    model.apply_model(noised, sigma, c_crossattn=context[0][0], y=context[0][1]["pooled_output"])
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for index, total in enumerate(sums):
        order = torch.argsort(total, descending=True)
        median = float(total.median())
        out[index] = {"top_channels": order[:3].tolist(), "top_ratio_to_median": [round(float(total[i]) / median, 2)
                                                                                  for i in order[:3]],
                      "massive": [int(i) for i in order if float(total[i]) > MASSIVE_RATIO * median]}
    return out


def use_choice(pack, indices: tuple[int, ...], norm: str, massive: dict) -> None:
    """Make the pack's Flux backbone read these blocks with this normalization (for this process)."""
    dit = pack("readout.backbones.dit")
    backbone = pack("readout.backbones.registry").FAMILIES["flux"]
    zeroed = sorted({c for stats in massive.values() for c in stats["massive"]})

    def normalize(tokens: torch.Tensor) -> torch.Tensor:
        if norm == "raw":
            return tokens
        if norm == "massive_zeroed_first" and zeroed:
            tokens[..., zeroed] = 0
        normed = dit.normalize_tokens(tokens)
        if norm == "zero_massive" and zeroed:
            normed[..., zeroed] = 0
        return normed

    backbone.readout_indices = lambda count: [i for i in indices if i < count]
    backbone.normalize = normalize


def train_depth_head(pack, folder: str, data: list[str], seed: int, steps: int | None) -> tuple[str, list]:
    """The depth head of world/heads.py's recipe, trained in this process on the world's Flux."""
    from world import heads as world_heads

    recipe = world_heads.HEAD_RECIPES["depth"]
    output = os.path.join(folder, f"head_{seed}.safetensors")
    comfy = os.environ["COMFYUI_PATH"]
    argv = [*world_heads.model_options("flux"), "--comfyui", comfy, "--kind", "depth", "--output", output,
            "--steps", str(steps or recipe["steps"]), "--lr", str(recipe["lr"]), "--batch-size", str(recipe["batch"]),
            *world_heads.TRAIN_OPTIONS, "--seed", str(seed), *data]
    with torch.inference_mode(False):
        code = pack("readout.train.__main__").main(argv)
    if code:
        raise SystemExit(f"training failed ({code})")
    state = torch.load(output.replace(".safetensors", ".state.pt"), weights_only=True)
    return output, state.get("val_losses")


def load_head(pack, path: str):
    """A trained head file as the nodes pass it on."""
    return pack("readout.heads.head_model").load_head_model(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16, help="sampling seeds per head")
    parser.add_argument("--train-seeds", type=int, default=2, help="heads trained per choice")
    parser.add_argument("--only", nargs="*", choices=list(CHOICES))
    parser.add_argument("--head-steps", type=int, help="training steps per head (default: world/heads.py's recipe)")
    parser.add_argument("--out", default=os.path.join(REPO, "output", "dit_readout_choices.json"))
    args = parser.parse_args()
    from testbed.bench_helpers import bootstrap

    bootstrap("cpu")
    from world import experiments as ex
    from world.datasets import write_spatial

    world = ex.World.load("flux")
    results = {"channel_statistics": channel_statistics(world, ex, ex.pack_module)}
    print(f"channel statistics per block: {json.dumps(results['channel_statistics'])}", flush=True)
    work = tempfile.mkdtemp(prefix="dit_choices_")
    images, targets = write_spatial(os.path.join(work, "data"), "depth", 128)
    data = ["--images", images, "--targets", targets]
    print("| choice | blocks | norm | held-out loss | unguided IoU | guided IoU | improved |\n|---|---|---|---|---|---|---|")
    for name in args.only or CHOICES:
        indices, norm = CHOICES[name]
        if norm in ("zero_massive", "massive_zeroed_first") and not any(s["massive"] for s in results["channel_statistics"].values()):
            print(f"| {name} | - | - | no channel is {MASSIVE_RATIO:g}x the median: same as layernorm | | | |", flush=True)
            continue
        use_choice(ex.pack_module, indices, norm, results["channel_statistics"])
        runs = []
        for train_seed in range(args.train_seeds):
            started = time.time()
            path, losses = train_depth_head(ex.pack_module, os.path.join(work, name), data, train_seed,
                                            args.head_steps)
            world.heads["depth"] = load_head(ex.pack_module, path)
            records = [ex.spatial(world, "depth", seed) for seed in range(args.seeds)]
            for r in records:
                r.pop("images", None)
            runs.append({"train_seed": train_seed, "val_losses": losses, "records": records,
                         "stats": ex.summary(records, "guided", "unguided"), "wall_s": time.time() - started})
        guided = [r["stats"]["mean"] for r in runs]
        final = [r["val_losses"][-1][1] for r in runs]
        results[name] = {"blocks": indices, "norm": norm, "runs": runs}
        print(f"| {name} | {','.join(map(str, indices))} | {norm} | {np.mean(final):.4f} ({', '.join(f'{v:.4f}' for v in final)}) "
              f"| {runs[0]['stats']['baseline_mean']:.3f} | {np.mean(guided):.3f} ({', '.join(f'{v:.3f}' for v in guided)}) "
              f"| {np.mean([r['stats']['improved'] for r in runs]):.0%} |", flush=True)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
