"""The demo's page on real demo outputs: every panel's images load in Chromium and every panel has a caption."""
from __future__ import annotations

import os

from browser import run_js
from demo import run_workflows
from demo_roles import GUIDED_SCORE, UNGUIDED_SCORE
from testbed import REPO

WORKFLOWS = ("spatial_pose.json", "drag_generated.json", "self_guidance_move_object.json")


def test_demo_page_shows_every_panel_with_its_images_scores_and_caption(browser, comfy_server, tmp_path):
    paths = [os.path.join(REPO, "workflows", name) for name in WORKFLOWS]
    panels, failures = run_workflows(comfy_server, paths, str(tmp_path), 64, 3)
    assert failures == 0
    assert [p.workflow for p in panels] == list(WORKFLOWS)
    for panel in panels:
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
    assert [s["title"] for s in sections] == list(WORKFLOWS)
    for section in sections:
        assert len(section["images"]) >= 3
        assert all(width > 0 for _, width in section["images"]), f"images that did not load: {section}"
        assert "random weights" in section["caption"] and "better" in section["caption"], section["caption"]
