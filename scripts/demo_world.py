"""`make demo`, the learned worlds: each experiment guided through the pack's nodes on several seeds, each next to
the same seed unguided, with the pixel detector's numbers and their mean; one panel per experiment (a column per
seed, with what was asked drawn over the pictures) leads output/index.html.

`python -m scripts.demo_world [SEEDS] [--family flux|zimage|qwen_image]` (default 4 seeds per experiment; `--family
flux`: the world's Flux, which ComfyUI 0.33 and newer load; `--family zimage`: the world's Z-Image at 8 steps and CFG
1; `--family qwen_image`: the world's Qwen-Image-Edit's drag at 8 steps and CFG 1); DEMO_OUTPUT sets the folder
(default output/). The panels are panel_world_<experiment>.png (panel_world_flux_<experiment>.png,
panel_world_zimage_<experiment>.png, panel_world_qwen_image_<experiment>.png), the docs' gallery.
Exits non-zero when, on the mean over the seeds, guidance did not help where the measured table says it does.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np

from testbed import REPO, comfyui_path, import_comfyui_in_process
from testbed.demo_page import Panel, panel_png, write_part
from testbed.demo_roles import (GUIDED_SCORE, GUIDED_VIEW, NO_DRAG_VIEW, REFERENCE_IMAGE, TARGET_MAP, UNGUIDED_SCORE,
                                UNGUIDED_VIEW)

if TYPE_CHECKING:
    from PIL.Image import Image

    from world.experiments import World

DEFAULT_SEEDS = 4
SCALE = 2
"""Marks are drawn on copies of the 128 px images enlarged this much (nearest), one source pixel wide."""
INK = (0, 0, 0)
HELPED = 0.25
"""A drag or move_to helped when the object went more than this share of the way on average over the seeds (well
under the 16-seed means in docs/measurements.md)."""
Views = list[tuple[str, "Image"]]


class Measure(NamedTuple):
    """A score of a seed's record: its label, the record's key for the guided run, and for the unguided one."""

    label: str
    key: str
    unguided_key: str | None = None
    higher_is_better: bool = True


@dataclass(frozen=True)
class Experiment:
    """A world experiment in the demo: its panel kind, the heads it needs, a seed's run (its record and the views
    to show, none when skipped) and what it scores (the first decides whether guidance helped)."""

    kind: str
    heads: tuple[str, ...]
    run: Callable[["World", int], tuple[dict, Views]]
    measures: tuple[Measure, ...]


def enlarged(array: np.ndarray) -> "Image":
    """A copy of an (H, W, 3) image in [0, 1] as a PIL image, SCALE times larger."""
    from PIL import Image

    picture = Image.fromarray((array.clip(0, 1) * 255).round().astype("uint8"))
    return picture.resize((picture.width * SCALE, picture.height * SCALE), Image.NEAREST)


def scaled(point: tuple[float, float]) -> tuple[float, float]:
    """A pixel position (x, y) on the 128 px image, on its enlarged copy (the pixel's centre)."""
    return ((point[0] + 0.5) * SCALE, (point[1] + 0.5) * SCALE)


def outlined(array: np.ndarray, masks: list[np.ndarray]) -> "Image":
    """A copy of the image with each mask's outline (its pixels next to a pixel outside it) drawn over it."""
    from PIL import Image

    edge = np.zeros(array.shape[:2], bool)
    for mask in masks:
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        edge |= mask & ~inner
    pixels = np.asarray(enlarged(array)).copy()
    pixels[edge.repeat(SCALE, 0).repeat(SCALE, 1)] = INK
    return Image.fromarray(pixels)


def with_arrow(array: np.ndarray, source: tuple[float, float], target: tuple[float, float]) -> "Image":
    """A copy of the image with an arrow from the drag's source (a dot) to its target (the arrowhead)."""
    from PIL import ImageDraw

    picture = enlarged(array)
    draw = ImageDraw.Draw(picture)
    (x0, y0), (x1, y1) = scaled(source), scaled(target)
    angle, head, dot = math.atan2(y1 - y0, x1 - x0), 7 * SCALE, 2.5 * SCALE
    draw.line([(x0, y0), (x1 - head * 0.8 * math.cos(angle), y1 - head * 0.8 * math.sin(angle))], fill=INK, width=SCALE)
    barbs = [(x1 - head * math.cos(angle + side), y1 - head * math.sin(angle + side)) for side in (0.4, -0.4)]
    draw.polygon([(x1, y1), *barbs], fill=INK)
    draw.ellipse([x0 - dot, y0 - dot, x0 + dot, y0 + dot], fill=INK)
    return picture


def with_goal(array: np.ndarray, start: tuple[float, float], goal: tuple[float, float]) -> "Image":
    """A copy of the image with the start marked (a cross) and the goal (a ring)."""
    from PIL import ImageDraw

    picture = enlarged(array)
    draw = ImageDraw.Draw(picture)
    (x, y), (gx, gy), arm, ring = scaled(start), scaled(goal), 4 * SCALE, 6 * SCALE
    draw.line([(x - arm, y - arm), (x + arm, y + arm)], fill=INK, width=SCALE)
    draw.line([(x - arm, y + arm), (x + arm, y - arm)], fill=INK, width=SCALE)
    draw.ellipse([gx - ring, gy - ring, gx + ring, gy + ring], outline=INK, width=SCALE)
    return picture


def save(picture: "Image", name: str, folder: str) -> str:
    """Save a picture in the demo folder; its file name."""
    picture.save(os.path.join(folder, name))
    return name


def spatial_views(kind: str, world: "World", seed: int) -> tuple[dict, Views]:
    """A scene's depth or edge map: the map, then the scene's objects outlined over the unguided and guided images."""
    from world import experiments as ex
    from world.scenes import random_scene

    record = ex.spatial(world, kind, seed)
    scene = random_scene(ex.EVAL_SCENE_BASE + seed)
    masks = scene.visible_masks()
    views = [(title, outlined(image, masks)) for title, image in zip((UNGUIDED_VIEW, GUIDED_VIEW), record["images"])]
    return record, [(TARGET_MAP, enlarged(scene.depth() if kind == "depth" else scene.edges())), *views]


def drag_views(real: bool, world: "World", seed: int) -> tuple[dict, Views]:
    """A drag of a generated object (or of an inverted scene's): the drag's arrow over the image before and after."""
    from world import experiments as ex

    record = (ex.drag_real if real else ex.drag_generated)(world, seed)
    if "skipped" in record:
        return record, []
    return record, [(title, with_arrow(image, record["source"], record["target"]))
                    for title, image in zip((NO_DRAG_VIEW, GUIDED_VIEW), record["images"])]


def edit_drag_views(world: "World", seed: int) -> tuple[dict, Views]:
    """Qwen-Image-Edit's drag: the reference scene, then the drag's arrow over the edit without and with the drag."""
    from world import experiments as ex

    record = ex.drag_edit(world, seed)
    if "skipped" in record:
        return record, []
    scene, kept, after = record["images"]
    return record, [(REFERENCE_IMAGE, enlarged(scene)),
                    *((title, with_arrow(image, record["source"], record["target"]))
                      for title, image in ((NO_DRAG_VIEW, kept), (GUIDED_VIEW, after)))]


def move_to_views(world: "World", seed: int) -> tuple[dict, Views]:
    """Self-Guidance move_to: the start and the goal marked on the unguided and the guided image."""
    from world import experiments as ex

    record = ex.self_guidance(world, seed, "move_to")
    if "skipped" in record:
        return record, []
    return record, [(title, with_goal(image, record["start"], record["goal"]))
                    for title, image in zip((UNGUIDED_VIEW, GUIDED_VIEW), record["images"])]


IOU = (Measure("IoU", "guided", "unguided"),)
DRAG = (Measure("moved", "moved"), Measure("ghost", "ghost", higher_is_better=False))
PANELS = {
    "world_spatial_depth": Experiment("spatial", ("depth",), partial(spatial_views, "depth"), IOU),
    "world_spatial_edge": Experiment("spatial", ("edge",), partial(spatial_views, "edge"), IOU),
    "world_drag_generated": Experiment("drag", ("correspondence", "appearance"), partial(drag_views, False), DRAG),
    "world_drag_real_image": Experiment("drag", ("correspondence", "appearance"), partial(drag_views, True), DRAG),
    "world_self_guidance_move_to": Experiment("self_guidance", (), move_to_views, (Measure("closed", "closed"),)),
}
FAMILY_PANELS = {
    "sd15": ("world_", PANELS),
    "flux": ("world_flux_", {"world_flux_spatial_depth": PANELS["world_spatial_depth"]}),
    "zimage": ("world_zimage_", {"world_zimage_spatial_depth": PANELS["world_spatial_depth"],
                                 "world_zimage_spatial_edge": PANELS["world_spatial_edge"],
                                 "world_zimage_drag_generated": PANELS["world_drag_generated"],
                                 "world_zimage_self_guidance_move_to": PANELS["world_self_guidance_move_to"]}),
    "qwen_image": ("world_qwen_image_", {"world_qwen_image_edit_drag": Experiment(
        "edit_drag", ("correspondence", "appearance"), edit_drag_views, DRAG)}),
}
"""Each world model's panel prefix and experiments (the world's Flux, Z-Image and Qwen-Image-Edit: those their heads,
or Self-Guidance, exist for)."""


def scores(measures: tuple[Measure, ...], records: list[dict]) -> dict[str, list[dict]]:
    """The records' means (one record: its own values) by score title, as the page shows scores."""
    def line(key_of: Callable[[Measure], str | None]) -> list[dict]:
        return [{"label": m.label, "value": float(np.mean([r[key_of(m)] for r in records])),
                 "higher_is_better": m.higher_is_better} for m in measures if key_of(m)]

    return {title: rows for title, rows in ((UNGUIDED_SCORE, line(lambda m: m.unguided_key)),
                                           (GUIDED_SCORE, line(lambda m: m.key))) if rows}


def helped(measure: Measure, records: list[dict]) -> bool:
    """Whether guidance helped on the mean over the records: above the unguided mean, or HELPED of the way."""
    if not records:
        return False
    floor = np.mean([r[measure.unguided_key] for r in records]) if measure.unguided_key else HELPED
    return float(np.mean([r[measure.key] for r in records])) > floor


def run_experiment(name: str, kind: str, experiment: Experiment, world: "World", seeds: int,
                   dest: str) -> tuple[Panel, bool]:
    """The experiment on seeds 0..seeds-1 as one panel (its images saved in dest); whether guidance helped."""
    panel, records = Panel(name, kind), []
    for seed in range(seeds):
        record, views = experiment.run(world, seed)
        shown = Panel(f"seed {seed}", kind)
        if views:
            shown.images = [(title, save(picture, f"{name}_seed{seed}_{i}.png", dest))
                            for i, (title, picture) in enumerate(views)]
            shown.scores = scores(experiment.measures, [record])
            records.append(record)
            print(f"[demo] {name} seed {seed}: {shown.score_summary()} ({record['seconds']:.0f} s guided)", flush=True)
        else:
            shown.workflow += f": skipped, {record['skipped']}"
            print(f"[demo] {name} {shown.workflow}", flush=True)
        panel.seeds.append(shown)
    panel.scores = scores(experiment.measures, records) if records else {}
    print(f"[demo] {name}: {panel.mean_line()} {panel_png(panel, dest)}", flush=True)
    return panel, helped(experiment.measures[0], records)


def main(argv: list[str]) -> int:
    family = "sd15"
    if "--family" in argv:
        at = argv.index("--family")
        family, argv = argv[at + 1], argv[:at] + argv[at + 2:]
    seeds = int(argv[0]) if argv else DEFAULT_SEEDS
    prefix, table = FAMILY_PANELS[family]
    dest = os.environ.get("DEMO_OUTPUT") or os.path.join(REPO, "output")
    os.makedirs(dest, exist_ok=True)
    import_comfyui_in_process(comfyui_path())
    from world.experiments import World

    world = World.load(family)
    panels, worse = [], []
    for name, experiment in table.items():
        missing = [h for h in experiment.heads if h not in world.heads]
        if missing:
            print(f"[demo] {name}: skipped, no world {' and '.join(missing)} head in models/readout_heads", flush=True)
            worse.append(name)
            continue
        panel, better = run_experiment(name, prefix + experiment.kind, experiment, world, seeds, dest)
        panels.append(panel)
        if not better:
            worse.append(f"{name}: {panel.mean_line()}")
    print(f"[demo] page: {write_part(panels, dest, prefix)}", flush=True)
    for line in worse:
        print(f"[demo] GUIDANCE DID NOT HELP {line}", file=sys.stderr, flush=True)
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
