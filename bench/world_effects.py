"""Readout guidance measured on the learned world model: every experiment guided vs the same seed unguided, scored
on decoded pixels by world/detector.py (no head involved).

    .venv/bin/python -m bench.world_effects [--seeds 16] [--only spatial_depth drag_generated ...] [--out FILE]

Prints one markdown row per experiment (mean +- spread over seeds, share of seeds improved, seconds per guided
run) and writes all records as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from testbed import REPO

WEIGHTS = (0.2, 0.43, 1.0, 2.0)
SCALE_SIZE_WEIGHTS = (0.0215, 0.1075, 0.215)
"""A twentieth, a quarter and half the default weight: scale_size overshoots at the default on the world's Z-Image."""
OFFICIAL_SCALED_WEIGHT = 3.58
"""0.43 * 100 / 12: rule official's Adam lr grows with the weight; its sign steps move the latent as far in the 12
steps of these runs as the default does in the official 100."""


def experiments(ex) -> dict:
    """name -> (run(world, seed), measure, baseline measure or None, what the row says)."""
    return {
        "spatial_depth": (lambda w, s: ex.spatial(w, "depth", s), "guided", "unguided", "object mask IoU with the depth map's scene"),
        "spatial_edge": (lambda w, s: ex.spatial(w, "edge", s), "guided", "unguided", "object mask IoU with the edge map's scene"),
        "drag_generated": (ex.drag_generated, "moved", None, "share of the requested displacement moved"),
        "drag_real": (ex.drag_real, "moved", None, "share of the requested displacement moved (inverted scene)"),
        "drag_edit": (ex.drag_edit, "moved", None,
                      "Qwen-Image-Edit: share of the displacement moved, the scene as the reference image"),
        "drag_edit_kept": (ex.drag_edit, "kept_iou", None,
                           "Qwen-Image-Edit: the unguided edit's foreground IoU with its reference scene"),
        "drag_edit_whole_window": ((lambda w, s: ex.drag_edit(w, s, end_percent=1.0)), "moved", None,
                                   "Qwen-Image-Edit, every step guided: share of the displacement moved"),
        "appearance": (ex.appearance, "guided", "unguided",
                       "colour similarity to the reference (1 - total variation of object colour areas; other seed)"),
        "self_guidance_move_to": (lambda w, s: ex.self_guidance(w, s, "move_to"), "closed", None,
                                  "share of the distance to the goal closed"),
        "self_guidance_scale_size": (lambda w, s: ex.self_guidance(w, s, "scale_size"), "area_ratio", None,
                                     "area guided / unguided (asked: 1.5)"),
        "word_attention_colour": (ex.word_localization, "colour_corr", None,
                                  "correlation of the colour word's attention with its object's mask"),
        "word_attention_shape": (ex.word_localization, "shape_corr", None,
                                 "correlation of the shape word's attention with its object's mask"),
        "official_spatial_depth": (lambda w, s: ex.spatial(w, "depth", s, rule="official"), "guided", "unguided",
                                   "rule official: object mask IoU"),
        "official_drag_generated": (lambda w, s: ex.drag_generated(w, s, rule="official"), "moved", None,
                                    "rule official: share of the displacement moved"),
        "official_scaled_spatial_depth": (lambda w, s: ex.spatial(w, "depth", s, rule="official",
                                                                 weight=OFFICIAL_SCALED_WEIGHT), "guided", "unguided",
                                          f"rule official at weight {OFFICIAL_SCALED_WEIGHT}: object mask IoU"),
        "official_scaled_drag_generated": (lambda w, s: ex.drag_generated(w, s, rule="official",
                                                                          weight=OFFICIAL_SCALED_WEIGHT), "moved", None,
                                           f"rule official at weight {OFFICIAL_SCALED_WEIGHT}: share moved"),
        **{f"weight_{v}_spatial_depth": ((lambda v: lambda w, s: ex.spatial(w, "depth", s, weight=v))(v), "guided",
                                         "unguided", f"weight {v}: object mask IoU") for v in WEIGHTS},
        **{f"weight_{v}_drag_generated": ((lambda v: lambda w, s: ex.drag_generated(w, s, weight=v))(v), "moved",
                                          None, f"weight {v}: share moved") for v in WEIGHTS},
        **{f"weight_{v}_drag_edit": ((lambda v: lambda w, s: ex.drag_edit(w, s, weight=v))(v), "moved", None,
                                     f"weight {v}: Qwen-Image-Edit's share moved") for v in WEIGHTS},
        **{f"weight_{v}_self_guidance_scale_size": (
            (lambda v: lambda w, s: ex.self_guidance(w, s, "scale_size", weight=v))(v), "area_ratio", None,
            f"weight {v}: area guided / unguided (asked: 1.5)") for v in SCALE_SIZE_WEIGHTS},
    }


def row(name: str, stats: dict, records: list[dict]) -> str:
    base = f"{stats['baseline_mean']:.3f} +- {stats['baseline_std']:.3f}" if "baseline_mean" in stats else "-"
    improved = f"{stats['improved']:.0%}" if "improved" in stats else "-"
    extra = ""
    kept = [r for r in records if "skipped" not in r]
    if kept and "colour_kept" in kept[0]:
        extra = (f" colour kept {sum(r['colour_kept'] for r in kept) / len(kept):.0%},"
                 f" ghost {sum(r['ghost'] for r in kept) / len(kept):.2f}")
    return (f"| {name} | {stats['seeds']} | {base} | {stats['mean']:.3f} +- {stats['std']:.3f} | {improved} |"
            f"{extra} | {stats['seconds']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--only", nargs="*", help="experiment names, each optionally NAME=SEEDS (default: all but the "
                                                  "weight sweep, --seeds each)")
    parser.add_argument("--quality", type=int, default=0, help="also measure the model's prompt following on N samples")
    parser.add_argument("--family", choices=("sd15", "flux", "zimage", "qwen_image"), default="sd15",
                        help="the SD1.5 world model, the world's Flux (ComfyUI 0.33 and newer: set COMFYUI_PATH), "
                             "its Z-Image or its Qwen-Image-Edit (8 steps at CFG 1; drag_edit is Qwen-Image-Edit's)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: the world's own)")
    parser.add_argument("--out", help="the JSON of every record (default: output/world_effects[_<family>].json)")
    args = parser.parse_args()
    args.out = args.out or os.path.join(REPO, "output", f"world_effects{'' if args.family == 'sd15' else '_' + args.family}.json")
    from testbed.bench_helpers import bootstrap

    bootstrap("cpu")
    from world import experiments as ex

    world = ex.World.load(args.family)
    world.steps = args.steps or world.steps
    table = experiments(ex)
    names = args.only or [n for n in table if not n.startswith("weight_")]
    results = {}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    if args.quality:
        results["quality"] = ex.model_quality(world, range(args.quality))
        print(f"model quality: {json.dumps(results['quality'])}", flush=True)
    print("| experiment | seeds | unguided | guided | improved | notes | s/run |\n|---|---|---|---|---|---|---|")
    runs: dict[tuple, list[dict]] = {}
    for item in names:
        name, _, count = item.partition("=")
        run, key, baseline, _ = table[name]
        started = time.time()
        seeds = int(count or args.seeds)
        if (run, seeds) not in runs:
            runs[run, seeds] = [run(world, seed) for seed in range(seeds)]
        records = runs[run, seeds]
        for r in records:
            r.pop("images", None)
        stats = ex.summary(records, key, baseline)
        results[name] = {"stats": stats, "records": records, "wall_s": time.time() - started}
        print(row(name, stats, records), flush=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
