"""The demo page without ComfyUI: the learned worlds lead it in whatever order the demo's parts ran, each part's
rerun replaces only its own panels, a world experiment's panel has a column per seed with their mean, and the
marks over the world's pictures land where the record says, on copies."""
from __future__ import annotations

import html

import numpy as np
from PIL import Image

from scripts.demo_world import FAMILY_PANELS, INK, IOU, SCALE, outlined, scaled, scores, with_arrow, with_goal
from testbed.demo_page import TINY_PART, Panel, load_panels, panel_png, write_part
from testbed.demo_roles import GUIDED_VIEW, TARGET_MAP, UNGUIDED_VIEW

BACKGROUND = np.full((128, 128, 3), 0.9, np.float32)


def world_panel(folder, name: str, kind: str, guided: list[float]) -> Panel:
    Image.new("RGB", (256, 256), (230, 230, 230)).save(folder / "world.png")
    panel = Panel(name, kind)
    for seed, value in enumerate(guided):
        record = {"unguided": 0.1, "guided": value}
        panel.seeds.append(Panel(f"seed {seed}", kind, [(TARGET_MAP, "world.png"), (UNGUIDED_VIEW, "world.png"),
                                                        (GUIDED_VIEW, "world.png")], scores(IOU, [record])))
    panel.scores = scores(IOU, [{"unguided": 0.1, "guided": v} for v in guided])
    return panel


def test_the_learned_worlds_lead_the_page_and_each_part_replaces_only_its_own(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "tiny.png")
    write_part([Panel("spatial_depth.json", "spatial", [(GUIDED_VIEW, "tiny.png")])], str(tmp_path), TINY_PART)
    write_part([world_panel(tmp_path, "world_spatial_depth", "world_spatial", [0.2])], str(tmp_path), "world_")
    flux = world_panel(tmp_path, "world_flux_spatial_depth", "world_flux_spatial", [0.3])
    write_part([flux], str(tmp_path), "world_flux_")
    write_part([world_panel(tmp_path, "world_spatial_depth", "world_spatial", [0.4, 0.6])], str(tmp_path), "world_")

    page = (tmp_path / "index.html").read_text()
    order = ["The learned world model", "world_spatial_depth", "The world's Flux", "world_flux_spatial_depth",
             "Every example workflow runs", "random weights", "spatial_depth.json"]
    at = [page.index(html.escape(text)) for text in order]
    assert at == sorted(at)
    panels = load_panels(str(tmp_path))
    assert [p.workflow for p in panels] == ["world_spatial_depth", "world_flux_spatial_depth", "spatial_depth.json"]
    assert [s.workflow for s in panels[0].seeds] == ["seed 0", "seed 1"]
    assert panels[0].mean_line() == "Mean over 2 seeds: unguided IoU 0.1000; guided IoU 0.5000"
    assert "docs/measurements.md" in panels[0].caption() and panels[0].mean_line() in page


def test_every_world_panel_the_demo_runs_says_what_to_look_for():
    """Each family's panels (`make demo`) have their caption, named by the family's prefix and the experiment."""
    for prefix, panels in FAMILY_PANELS.values():
        for name, experiment in panels.items():
            caption = Panel(name, prefix + experiment.kind).caption()
            assert "docs/measurements.md" in caption and len(caption) > 200, name


def test_a_world_panel_has_a_column_per_seed(tmp_path):
    name = panel_png(world_panel(tmp_path, "world_spatial_depth", "world_spatial", [0.2, 0.3, 0.4, 0.5]), str(tmp_path))
    assert name == "panel_world_spatial_depth.png"
    assert Image.open(tmp_path / name).width == 8 + 4 * (192 + 8)


def test_marks_land_where_the_record_says_on_a_copy():
    image = BACKGROUND.copy()
    mask = np.zeros((128, 128), bool)
    mask[40:60, 30:70] = True
    ink = lambda picture, x, y: picture.getpixel((int(x), int(y))) == INK  # noqa: E731
    boxed = outlined(image, [mask])
    assert boxed.size == (128 * SCALE, 128 * SCALE) and np.array_equal(image, BACKGROUND)
    assert ink(boxed, *scaled((30, 50))) and ink(boxed, *scaled((69, 59))) and not ink(boxed, *scaled((50, 50)))
    arrow = with_arrow(image, (40.0, 50.0), (70.0, 80.0))
    assert ink(arrow, *scaled((40, 50))) and ink(arrow, *scaled((55, 65))) and not ink(arrow, *scaled((40, 80)))
    goal, (gx, gy) = with_goal(image, (40.0, 50.0), (90.0, 30.0)), scaled((90, 30))
    assert ink(goal, *scaled((40, 50))) and not ink(goal, gx, gy) and ink(goal, gx + 6 * SCALE - 1, gy)
