"""Heads trained in the graph on the learned world model, measured as guidance targets against the heads trained
from ground truth (issue: train readout heads inside ComfyUI).

    .venv/bin/python -m bench.world_train_in_graph [--samples 128] [--seeds 16] [--out FILE]

Every step is a node call, as the example workflow train_edge_head.json wires them: the world model's own samples
(KSampler) -> ComfyUI's Canny node -> Readout Dataset (Spatial) -> Train Readout Head (the GT edge head's recipe);
the same samples -> Readout Dataset (Correspondence) (random affine warps, exact matches) -> Train Readout Head.
Then the edge experiment (object mask IoU of a scene's edge map, its caption, another seed) and the generated drag
are run with each head, against the same seed unguided, scored by the colour-blob detector.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time

import numpy as np
import torch

from testbed import REPO

SAMPLE_SCENE_BASE = 8 * 10**8
"""Captions of the training samples: scenes apart from the evaluation's (world.experiments.EVAL_SCENE_BASE)."""
CANNY = {"low_threshold": 0.1, "high_threshold": 0.3}
"""Canny's defaults (0.4 / 0.8) miss the light colours (yellow, cyan) on the world's light background."""
RECIPES = {  # the recipes of the heads trained from ground truth (world/heads.py), at the world's 128 px
    "edge": {"steps": 150, "batch_size": 8, "learning_rate": 1e-3},
    "correspondence": {"steps": 80, "batch_size": 4, "learning_rate": 1e-3},
}
PAIR_IMAGES = 96
"""The GT correspondence head trained on 96 pairs; the graph's trains on warps of 96 of the samples."""


def samples(world, ex, count: int) -> tuple[np.ndarray, float]:
    """The world model's unguided samples of `count` random captions (seeds 0..count-1), and the seconds taken."""
    from world.scenes import random_scene

    started = time.time()
    images = [world.decode(world.sample(seed, random_scene(SAMPLE_SCENE_BASE + seed).caption)) for seed in range(count)]
    return np.stack(images), time.time() - started


def train(world, dataset, kind: str, name: str, scale: float) -> tuple[object, float, str]:
    """Train Readout Head on the dataset with the GT head's recipe (steps times `scale`), under inference mode as
    ComfyUI runs nodes; the head, the seconds, the node's report."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS["TrainReadoutHead"]
    recipe = {**RECIPES[kind], "steps": max(1, round(RECIPES[kind]["steps"] * scale))}
    started = time.time()
    with torch.inference_mode():
        out = getattr(cls(), cls.FUNCTION)(model=world.model, vae=world.vae, clip=world.clip, dataset=dataset,
                                           kind=kind, head_name=name, resolution=128, seed=0, existing="start over",
                                           validation_fraction=0.1, projection_dim=128, **recipe)
    return out.result[0], time.time() - started, "\n".join(out.ui["text"])


def edge_iou(world, ex, seed: int, head, target: np.ndarray) -> float:
    """Object mask IoU with the scene of the guided image, guided by `head` towards the edge map `target`."""
    from world.detector import detect, foreground, iou
    from world.scenes import random_scene

    scene = random_scene(ex.EVAL_SCENE_BASE + seed)
    truth = np.any(scene.visible_masks(), axis=0)
    guidance = ex.call_node("ReadoutTarget", head=head, start_percent=0.0, end_percent=0.5, target_image=ex.to_image(target),
                       weight=ex._default_weight())[0]
    guided = world.guided(seed, scene.caption, guidance)[0]
    return iou(foreground(detect(guided), truth.shape), truth)


def canny(ex, images: np.ndarray) -> torch.Tensor:
    """ComfyUI's Canny node on (H, W, 3) or (B, H, W, 3) images: an IMAGE batch of edge maps."""
    batch = images[None] if images.ndim == 3 else images
    return ex.call_node("Canny", image=torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)), **CANNY)[0]


def measure_edges(world, ex, seeds: int, heads: dict) -> list[dict]:
    """Per seed: unguided IoU, the GT head with the GT edge map, the graph head with Canny of the scene's image (what
    a user of that head draws targets with) and with the GT edge map."""
    from world.detector import detect, foreground, iou
    from world.scenes import random_scene

    records = []
    for seed in range(seeds):
        scene = random_scene(ex.EVAL_SCENE_BASE + seed)
        truth = np.any(scene.visible_masks(), axis=0)
        plain = world.unguided(seed, scene.caption)
        canny_map = canny(ex, scene.image())[0].numpy()
        records.append({
            "seed": seed, "unguided": iou(foreground(detect(plain), truth.shape), truth),
            "gt_head": edge_iou(world, ex, seed, heads["gt"], scene.edges()),
            "graph_head_canny_target": edge_iou(world, ex, seed, heads["graph"], canny_map),
            "graph_head_gt_target": edge_iou(world, ex, seed, heads["graph"], scene.edges()),
        })
        print(f"[edge] {json.dumps(records[-1])}", flush=True)
    return records


def measure_drags(world, ex, seeds: int, graph_head) -> list[dict]:
    """The generated-object drag with the GT correspondence head and with the graph's (same appearance head)."""
    graph_world = dataclasses.replace(world, heads={**world.heads, "correspondence": graph_head})
    records = []
    for seed in range(seeds):
        record = {"seed": seed}
        for label, used in (("gt_head", world), ("graph_head", graph_world)):
            result = ex.drag_generated(used, seed)
            result.pop("images", None)
            record[label] = result
        records.append(record)
        print(f"[drag] {json.dumps(record, default=float)}", flush=True)
    return records


def stats(values: list[float]) -> str:
    return f"{np.mean(values):.3f} +- {np.std(values):.3f}"


def report(edges: list[dict], drags: list[dict], log: dict) -> str:
    """The README's rows."""
    lines = [f"samples {log['samples']} in {log['sampling_s']:.0f} s; edge head trained in {log['edge_train_s']:.0f} s,"
             f" correspondence head in {log['correspondence_train_s']:.0f} s"]
    if edges:
        base = [r["unguided"] for r in edges]
        for key in ("gt_head", "graph_head_canny_target", "graph_head_gt_target"):
            values = [r[key] for r in edges]
            better = sum(v > b for v, b in zip(values, base))
            gain = np.mean(values) - np.mean(base)
            lines.append(f"edge IoU, {key}: unguided {stats(base)} -> {stats(values)} (+{gain:.3f}); "
                         f"{better} of {len(edges)} improved")
    if drags:
        for key in ("gt_head", "graph_head"):
            kept = [r[key] for r in drags if "skipped" not in r[key]]
            moved = [r["moved"] for r in kept]
            half = sum(m >= 0.5 for m in moved)
            colour = np.mean([r["colour_kept"] for r in kept]) if kept else float("nan")
            ghost = np.mean([r["ghost"] for r in kept]) if kept else float("nan")
            lines.append(f"drag moved, {key}: {stats(moved)}; {half} of {len(kept)} at least half; colour kept "
                         f"{colour:.0%}; ghost {ghost:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128, help="world samples to label and train on (issue: <= 128)")
    parser.add_argument("--seeds", type=int, default=16, help="evaluation seeds per experiment")
    parser.add_argument("--drag-seeds", type=int, default=None, help="evaluation seeds of the drag (default: --seeds)")
    parser.add_argument("--scale", type=float, default=1.0, help="share of the training steps (a quick check)")
    parser.add_argument("--out", default=os.path.join(REPO, "output", "world_train_in_graph.json"))
    args = parser.parse_args()
    from testbed.bench_helpers import bootstrap

    bootstrap("cpu")
    from world import experiments as ex

    world = ex.World.load()
    images, sampling_s = samples(world, ex, args.samples)
    print(f"[world] {len(images)} samples in {sampling_s:.0f} s", flush=True)
    labels = canny(ex, images)
    import folder_paths

    root = folder_paths.get_folder_paths("readout_datasets")[0]
    for name in ("world_canny_edges", "world_warped_pairs"):
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    edge_data = ex.call_node("ReadoutSpatialDataset", images=batch, labels=labels, dataset_name="world_canny_edges",
                        kind="edge")[0]
    edge_head, edge_s, edge_text = train(world, edge_data, "edge", "world_graph_edge", args.scale)
    print(f"[world] edge head in {edge_s:.0f} s\n{edge_text}", flush=True)
    pair_data = ex.call_node("ReadoutCorrespondenceDataset", images=batch[:PAIR_IMAGES], dataset_name="world_warped_pairs",
                        warp="affine", strength=0.5, pairs_per_image=1, points_per_pair=32, seed=0)[0]
    pair_head, pair_s, pair_text = train(world, pair_data, "correspondence", "world_graph_correspondence",
                                         args.scale)
    print(f"[world] correspondence head in {pair_s:.0f} s\n{pair_text}", flush=True)
    log = {"samples": len(images), "sampling_s": sampling_s, "edge_train_s": edge_s, "correspondence_train_s": pair_s,
           "edge_report": edge_text, "correspondence_report": pair_text}
    edges = measure_edges(world, ex, args.seeds, {"gt": world.heads["edge"], "graph": edge_head})
    drags = measure_drags(world, ex, args.drag_seeds or args.seeds, pair_head)
    text = report(edges, drags, log)
    print(text, flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"log": log, "edges": edges, "drags": drags, "report": text}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
