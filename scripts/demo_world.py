"""`make demo`, second part: the learned world model guided through the pack's nodes, next to the same seed
unguided, with the pixel detector's numbers; panels are added to output/index.html.

`python -m scripts.demo_world [SEEDS] [--family flux]` (default 1 seed per experiment; `--family flux`: the world's Flux,
which ComfyUI 0.33 and newer load); DEMO_OUTPUT sets the folder (default output/).
Exits non-zero when guidance did not help in a panel where the measured table says it does.
"""
from __future__ import annotations

import json
import os
import sys

from testbed import REPO

from testbed.demo_page import Panel, panel_png, write_page
from testbed.demo_roles import GUIDED_SCORE, GUIDED_VIEW, NO_DRAG_VIEW, TARGET_MAP, UNGUIDED_SCORE, UNGUIDED_VIEW
from testbed import comfyui_path, import_comfyui_in_process

PANELS = {
    "world_spatial_depth": ("spatial", "IoU of the detected objects with the depth map's scene", ("depth",)),
    "world_spatial_edge": ("spatial", "IoU of the detected objects with the edge map's scene", ("edge",)),
    "world_drag_generated": ("drag", "share of the requested displacement the object moved",
                             ("correspondence", "appearance")),
    "world_drag_real_image": ("drag", "share of the requested displacement the object moved (inverted scene)",
                              ("correspondence", "appearance")),
    "world_self_guidance_move_to": ("self_guidance", "share of the distance to the goal closed", ()),
}
FLUX_PANELS = {
    "world_flux_spatial_depth": ("spatial", "IoU of the detected objects with the depth map's scene", ("depth",)),
}
"""The world's Flux: the experiments its heads exist for."""


def save(array, name: str, folder: str) -> str:
    from PIL import Image

    Image.fromarray((array.clip(0, 1) * 255).round().astype("uint8")).save(os.path.join(folder, name))
    return name


def run(name: str, world, seed: int):
    from world import experiments as ex
    from world.scenes import random_scene

    if "_spatial_" in name:
        kind = name.rsplit("_", 1)[1]
        record = ex.spatial(world, kind, seed)
        scene = random_scene(ex.EVAL_SCENE_BASE + seed)
        target = scene.depth() if kind == "depth" else scene.edges()
        return record, [(TARGET_MAP, target), (UNGUIDED_VIEW, record["images"][0]),
                        (GUIDED_VIEW, record["images"][1])], [("IoU", record["unguided"], record["guided"])]
    if "_drag_" in name:
        record = (ex.drag_generated if name.endswith("generated") else ex.drag_real)(world, seed)
        if "skipped" in record:
            return record, [], []
        return record, [(NO_DRAG_VIEW, record["images"][0]), (GUIDED_VIEW, record["images"][1])], [
            ("moved (share of the drag)", 0.0, record["moved"]), ("ghost at the source", 0.0, record["ghost"])]
    record = ex.self_guidance(world, seed, "move_to")
    if "skipped" in record:
        return record, [], []
    return record, [(UNGUIDED_VIEW, record["images"][0]), (GUIDED_VIEW, record["images"][1])], [
        ("distance to goal closed", 0.0, record["closed"])]


def main(argv: list[str]) -> int:
    family = "sd15"
    if "--family" in argv:
        at = argv.index("--family")
        family, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    seeds = int(argv[0]) if argv else 1
    prefix, others, table = ("world_flux_", (), FLUX_PANELS) if family == "flux" else ("world_", ("world_flux_",), PANELS)
    dest = os.environ.get("DEMO_OUTPUT") or os.path.join(REPO, "output")
    os.makedirs(dest, exist_ok=True)
    import_comfyui_in_process(comfyui_path())
    from world.experiments import World

    world = World.load(family)
    listing = os.path.join(dest, "panels.json")
    panels = []
    if os.path.exists(listing):
        with open(listing, encoding="utf-8") as f:
            panels = [Panel(**{**p, "images": [tuple(i) for i in p["images"]]}) for p in json.load(f)
                      if not p["workflow"].startswith(prefix) or p["workflow"].startswith(others)]
    worse = []
    for name, (kind, measure, heads) in table.items():
        missing = [h for h in heads if h not in world.heads]
        if missing:
            print(f"[demo] {name}: skipped, no world {' and '.join(missing)} head in models/readout_heads", flush=True)
            worse.append(name)
            continue
        for seed in range(seeds):
            record, images, scores = run(name, world, seed)
            if not images:
                print(f"[demo] {name} seed {seed}: {record['skipped']}", flush=True)
                continue
            panel = Panel(f"{name}_seed{seed}", f"{prefix}{kind}")
            panel.images = [(title, save(image, f"{name}_seed{seed}_{i}.png", dest)) for i, (title, image) in enumerate(images)]
            guided = scores[0][2]
            panel.scores = {GUIDED_SCORE: [{"label": label, "value": after, "higher_is_better": "ghost" not in label}
                                           for label, _, after in scores]}
            if kind == "spatial":
                panel.scores[UNGUIDED_SCORE] = [{"label": "IoU", "value": scores[0][1], "higher_is_better": True}]
                better = guided > scores[0][1]
            else:
                better = guided > 0.25
            print(f"[demo] {panel.workflow}: {measure}: {json.dumps({s[0]: round(s[2], 3) for s in scores})} "
                  f"({record['seconds']:.0f} s guided) {panel_png(panel, dest)}", flush=True)
            if not better:
                worse.append(panel.workflow)
            panels.append(panel)
    print(f"[demo] page: {write_page(panels, dest)}", flush=True)
    for line in worse:
        print(f"[demo] GUIDANCE DID NOT HELP {line}", file=sys.stderr, flush=True)
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
