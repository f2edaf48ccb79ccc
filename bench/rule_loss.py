"""Effect of the guidance rule on the target loss: fast (the default) vs official, on the tiny model.

    .venv/bin/python -m bench.rule_loss [--steps 20] [--seeds 3]

For a pose and a depth head, the target is the head's readout of another seed's image; each seed samples
unguided, with rule fast (loss_branch cond and both) and with rule official (ddim, ddim_uniform, cfg 5, default
weight 0.43 and window, the first half). Prints the target's loss on the final latent (the head's readout at
t = 0, as Extract Readout reads it; our loss, and plain MSE) relative to unguided, and seconds per run.
"""
from __future__ import annotations

import argparse
import importlib
import time


RUNS = {"fast (cond)": {"rule": "fast", "loss_branch": "cond"}, "fast (both)": {"rule": "fast", "loss_branch": "both"},
        "official": {"rule": "official", "loss_branch": "cond"}}


def pack(submodule: str):
    from testbed import comfyui_path, pack_dir_in

    return importlib.import_module(f"{pack_dir_in(comfyui_path()).replace('.', '_x_')}.{submodule}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from testbed.bench_helpers import bootstrap
    from testbed.nodes import call_node
    from tiny.models import TINY_CHECKPOINT, tiny_head_name

    bootstrap("cpu")
    model, clip = call_node("CheckpointLoaderSimple", ckpt_name=TINY_CHECKPOINT)[:2]
    pos = call_node("CLIPTextEncode", text="a dancer on a beach", clip=clip)[0]
    neg = call_node("CLIPTextEncode", text="", clip=clip)[0]
    latent = call_node("EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    sample = dict(model=model, steps=args.steps, cfg=5.0, sampler_name="ddim", scheduler="ddim_uniform",
                  positive=pos, negative=neg, latent_image=latent, denoise=1.0)
    extract, readouts = pack("readout.heads.extract"), pack("readout.heads.readouts")
    spatial = pack("readout.targets.spatial")
    print(f"tiny model, 64 px, {args.steps} ddim steps, cfg 5, weight 0.43, window [0, 0.5], {args.seeds} seeds")
    print(f"{'head':6} {'rule':12} {'loss / unguided':>16} {'plain MSE / unguided':>21} {'s/run':>7}")
    for kind in ("pose", "depth"):
        head = call_node("LoadReadoutHead", head_name=tiny_head_name(kind))[0]
        control_range = head.config.control_range

        def read(samples):
            with torch.inference_mode():
                return extract.latent_readout(model, head, samples, neg, 0, 0)

        totals = {name: [0.0, 0.0, 0.0] for name in ("unguided", *RUNS)}
        for seed in range(args.seeds):
            goal = readouts.spatial_to_unit(read(call_node("KSampler", seed=100 + seed, **sample)[0]["samples"]),
                                            control_range)
            target = call_node("ReadoutTarget", head=head, weight=0.43, start_percent=0.0, end_percent=0.5,
                               target_image=goal.movedim(1, -1))[0]
            for name in totals:
                start = time.perf_counter()
                if name == "unguided":
                    out = call_node("KSampler", seed=seed, **sample)[0]["samples"]
                else:
                    out = call_node("ReadoutGuidedKSampler", seed=seed, guidance=target, **sample, **RUNS[name])[0]
                    out = out["samples"]
                seconds = time.perf_counter() - start
                readout = read(out)
                ours = float(target[0].loss(readout).sum())
                plain = float(spatial.spatial_map_loss(readout, goal, control_range, sparse=False).sum())
                for i, value in enumerate((ours, plain, seconds)):
                    totals[name][i] += value
        base = totals["unguided"]
        for name, (ours, plain, seconds) in totals.items():
            print(f"{kind:6} {name:12} {ours / base[0]:16.3f} {plain / base[1]:21.3f} {seconds / args.seeds:7.2f}")


if __name__ == "__main__":
    main()
