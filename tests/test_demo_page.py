"""The demo on the tiny models, as `make demo` runs it but at 4 steps (its default is 10; at 4
recurrence's auto guides the spatial panels twice a step, Z-Image's once), as distilled models sample: guided beats unguided in
every spatial, drag and self-guidance panel, and the page shows every panel with its images, scores and caption in
Chromium."""
from __future__ import annotations

import glob
import os

from browser import run_js
from scripts.demo import guidance_failures, run_workflows
from testbed.demo_page import ASSERTED_KINDS
from testbed.demo_roles import GUIDED_SCORE, UNGUIDED_SCORE
from testbed import REPO

DEMO_SIZE, DEMO_STEPS = 64, 4


def test_demo_page_shows_every_panel_with_its_images_scores_and_caption(browser, comfy_server, tmp_path):
    paths = sorted(glob.glob(os.path.join(REPO, "example_workflows", "*.json")))
    panels, failures = run_workflows(comfy_server, paths, str(tmp_path), DEMO_SIZE, DEMO_STEPS)
    assert failures == 0
    names = [os.path.basename(p) for p in paths]
    assert [p.workflow for p in panels] == names
    assert guidance_failures(panels) == []
    assert {p.kind for p in panels} >= set(ASSERTED_KINDS) | {"appearance", "identity", "baseline"}
    for panel in panels:
        if panel.kind != "baseline":
            assert {UNGUIDED_SCORE, GUIDED_SCORE} <= set(panel.scores), f"{panel.workflow} reported no scores"
            assert len(panel.images) >= 3, f"{panel.workflow} has only {panel.images}"
        assert os.path.exists(tmp_path / f"panel_{panel.workflow[:-5]}.png")
    assert os.path.exists(tmp_path / "contact_sheet.png")

    browser.get(f"file://{tmp_path / 'index.html'}")
    sections = run_js(browser, """
        const images = [...document.images];
        await Promise.all(images.map((img) => img.complete ? null : new Promise((r) => { img.onload = img.onerror = r; })));
        return [...document.querySelectorAll("section.panel")].map((s) => ({
            title: s.querySelector("h2").textContent,
            images: [...s.querySelectorAll("img")].map((img) => [img.alt, img.naturalWidth]),
            caption: s.querySelector(".caption")?.textContent ?? "",
        }));
    """)
    assert [s["title"] for s in sections] == names
    for section, panel in zip(sections, panels):
        assert len(section["images"]) >= (1 if panel.kind == "baseline" else 3)
        assert all(width > 0 for _, width in section["images"]), f"images that did not load: {section}"
        assert "random weights" in section["caption"], section["caption"]
        if panel.kind != "baseline":
            assert "better" in section["caption"], section["caption"]
