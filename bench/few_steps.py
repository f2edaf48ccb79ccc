"""Readout guidance in few steps at CFG 1, as distilled models sample: on the learned world models, the depth (or
edge) map's object IoU gain over the same seed unguided and the drag's share of the requested displacement moved, at 4, 8, 12
and 20 steps, for step windows ending at 50% (the default) and at 100% of the steps, with 1 or more guided passes per
step (recurrence).

    .venv/bin/python -m bench.few_steps [--family sd15|flux|zimage] [--seeds 8] [--steps 4 8 12 20] [--windows 0.5 1]
        [--recurrence 1 2] [--measures depth edge drag] [--out FILE]

Prints one markdown row per (steps, window) and writes every record as JSON. Scored on pixels by world/detector.py
(no head involved). The world's Flux has no committed drag heads: it runs the depth rows unless
`python -m world.heads --family flux --kinds correspondence appearance` trained them.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from testbed import REPO

WINDOWS = (0.5, 1.0)
"""Where the guided step window ends (start 0) by default: the default window, and every step."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("sd15", "flux", "zimage"), default="sd15")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 12, 20])
    parser.add_argument("--cfg", type=float, default=1.0)
    parser.add_argument("--windows", type=float, nargs="+", default=list(WINDOWS))
    parser.add_argument("--recurrence", type=int, nargs="+", default=[1])
    parser.add_argument("--measures", nargs="+", default=["depth", "drag"])
    parser.add_argument("--shift", type=float, help="a flow model's sampling shift (ModelSamplingAuraFlow; default: "
                                                    "the model's own: the world's Flux 1, the world's Z-Image 3)")
    parser.add_argument("--out", help="the JSON of every record (default: output/few_steps_<family>.json)")
    args = parser.parse_args()
    args.out = args.out or os.path.join(REPO, "output", f"few_steps_{args.family}.json")
    from testbed.bench_helpers import bootstrap

    bootstrap("cpu")
    from world import experiments as ex

    world = ex.World.load(args.family)
    world.cfg = args.cfg
    if args.shift is not None:
        world.model = ex.call_node("ModelSamplingAuraFlow", model=world.model, shift=args.shift)[0]
    measures = {kind: ((lambda kind: lambda seed, end: ex.spatial(world, kind, seed, end_percent=end))(kind), "guided",
                       "unguided") for kind in ("depth", "edge") if kind in args.measures and kind in world.heads}
    if "correspondence" in world.heads and "drag" in args.measures:
        measures["drag"] = (lambda seed, end: ex.drag_generated(world, seed, end_percent=end), "moved", None)
    results: dict[str, dict] = {}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    print(f"{args.family} world, cfg {args.cfg}, shift {args.shift or 'own'}, {args.seeds} seeds\n"
          "| measure | steps | window end | recurrence | unguided | guided | gain or moved | improved | s/run |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for steps in args.steps:
        world.steps = steps
        for name, (run, key, baseline) in measures.items():
            for end in args.windows:
                for recurrence in args.recurrence:
                    world.recurrence = recurrence
                    started = time.time()
                    records = [run(seed, end) for seed in range(args.seeds)]
                    for record in records:
                        record.pop("images", None)
                    stats = ex.summary(records, key, baseline)
                    results[f"{name}_{steps}_{end}_{recurrence}"] = {"stats": stats, "records": records}
                    seconds = (time.time() - started) / max(1, len(records))
                    print(row(name, steps, end, recurrence, stats, records, seconds), flush=True)
                    with open(args.out, "w", encoding="utf-8") as f:
                        json.dump(results, f, indent=1, default=float)


def row(name: str, steps: int, end: float, recurrence: int, stats: dict, records: list[dict], seconds: float) -> str:
    head = f"| {name} {'IoU' if 'baseline_mean' in stats else 'moved'} | {steps} | {end:.0%} | {recurrence} |"
    if "baseline_mean" in stats:
        gains = np.array([r["guided"] - r["unguided"] for r in records if "skipped" not in r])
        return (f"{head} {stats['baseline_mean']:.3f} | {stats['mean']:.3f} | "
                f"{gains.mean():+.3f} +- {gains.std():.3f} | {stats['improved']:.0%} | {seconds:.1f} |")
    done = [r for r in records if "skipped" not in r]
    kept = np.mean([r["colour_kept"] for r in done]) if done else float("nan")
    half = sum(r["moved"] >= 0.5 for r in done)
    return (f"{head} - | - | {stats['mean']:.3f} +- {stats['std']:.3f} ({len(records) - len(done)} skipped; colour "
            f"kept {kept:.0%}) | {half} of {len(done)} moved half | {seconds:.1f} |")


if __name__ == "__main__":
    main()
