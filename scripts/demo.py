"""`make demo`: run every workflow in workflows/ on a real ComfyUI server with the tiny models, and show what
guidance did: output/index.html gets one panel per workflow, from the workflows' own comparison nodes, in its last
part, after the learned worlds' panels (scripts/demo_world.py; those of an earlier run are kept).

`python -m scripts.demo NAME.json ...` runs only those workflows; DEMO_OUTPUT sets the folder (default output/).
Model and head file names are swapped for the tiny ones, the canvas is capped at DEMO_SIZE pixels
(default 64) and steps at DEMO_STEPS (default 10), so the demo takes minutes on a CPU. It exits non-zero when a
workflow fails or when a spatial, drag or self-guidance panel's guided score is not better than the unguided one.
"""
from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
import time
import urllib.parse
import urllib.request

from testbed.server import ComfyServer, PromptFailed, start_server, stop_server
from testbed.demo_page import ASSERTED_KINDS, TINY_PART, Panel, panel_png, write_part
from testbed.demo_roles import GUIDED_SCORE, TARGET_MAP, UNGUIDED_SCORE
from testbed import REPO, comfyui_path
from testbed.tiny_names import comfyui_lacks_family, fit_for_cpu
from testbed.workflow_api import WorkflowError, ui_to_api

KIND_BY_NODE = (("WordAttentionMap", "self_guidance"), ("DrawDragPoints", "drag"), ("ReadoutIdentityTarget", "identity"),
                ("ReadoutAppearanceTarget", "appearance"), ("ReadoutTarget", "spatial"))


def workflow_kind(workflow: dict) -> str:
    types = {node["type"] for node in workflow["nodes"]}
    return next((kind for node_type, kind in KIND_BY_NODE if node_type in types), "baseline")


def fetch(server: ComfyServer, image: dict) -> bytes:
    """An image the server knows (output, temp or input folder), through its /view endpoint."""
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image.get("subfolder", ""),
                                    "type": image.get("type", "output")})
    with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as reply:
        return reply.read()


class NotOnThisComfyUI(Exception):
    """The server's ComfyUI cannot run a workflow's model family on the tiny models (the message says why)."""


def server_version(server: ComfyServer) -> tuple[int, ...]:
    """The ComfyUI version the server reports, e.g. (0, 33, 0)."""
    text = server.get("/system_stats")["system"]["comfyui_version"]
    return tuple(int(part) for part in text.split(".")[:3])


def run_workflow(server: ComfyServer, object_info: dict, path: str, dest: str, size: int, steps: int,
                 version: tuple[int, ...]) -> tuple[Panel, list[str]]:
    """Run one workflow; its panel (images by node title, scores) and the images it saved."""
    stem = os.path.splitext(os.path.basename(path))[0]
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    titles = {str(node["id"]): node.get("title") for node in workflow["nodes"]}
    prompt = fit_for_cpu(ui_to_api(workflow, object_info), size, steps)
    reason = comfyui_lacks_family(prompt, version)
    if reason:
        raise NotOnThisComfyUI(reason)
    entry = server.run(prompt, timeout=1800)
    panel, saved = Panel(os.path.basename(path), workflow_kind(workflow)), []
    for node_id, output in entry.get("outputs", {}).items():
        title = titles.get(node_id)
        for image in output.get("images", []):
            name = f"{stem}__{image['filename']}"
            with open(os.path.join(dest, name), "wb") as f:
                f.write(fetch(server, image))
            if image.get("type") == "output":
                saved.append(os.path.join(dest, name))
            if title:
                panel.images.append((title, name))
        if title and output.get("scores"):
            panel.scores[title] = output["scores"]
    for node_id, node in prompt.items():
        if titles.get(node_id) == TARGET_MAP:
            name = f"{stem}__target_{node['inputs']['image']}"
            with open(os.path.join(dest, name), "wb") as f:
                f.write(fetch(server, {"filename": node["inputs"]["image"], "type": "input"}))
            panel.images.append((TARGET_MAP, name))
    if panel.kind == "baseline":
        panel.images += [("Image", os.path.basename(p)) for p in saved]
    return panel, saved


def contact_sheet(images: list[str], path: str, cell: int = 160) -> None:
    """One picture of every image the demo's workflows saved, each labelled with its file name."""
    from PIL import Image, ImageDraw

    columns = 4
    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 16)), (24, 24, 28))
    draw = ImageDraw.Draw(sheet)
    for index, image_path in enumerate(images):
        x, y = (index % columns) * cell, (index // columns) * (cell + 16)
        image = Image.open(image_path).convert("RGB")
        sheet.paste(image.resize((cell, cell), Image.NEAREST), (x, y))
        draw.text((x + 2, y + cell + 2), os.path.basename(image_path)[:26], fill=(220, 220, 220))
    sheet.save(path)


def run_workflows(server: ComfyServer, workflows: list[str], dest: str, size: int, steps: int) -> tuple[list[Panel], int]:
    """Run the workflows, write their panels, index.html (in place of the tiny models' panels of an earlier run) and
    contact_sheet.png; the panels and the failure count."""
    os.makedirs(dest, exist_ok=True)
    object_info, version = server.get("/object_info"), server_version(server)
    panels, saved, failures = [], [], 0
    for path in workflows:
        started = time.monotonic()
        try:
            panel, images = run_workflow(server, object_info, path, dest, size, steps, version)
        except NotOnThisComfyUI as err:
            print(f"[demo] skipped {os.path.basename(path)}: {err} (make demo runs the examples on ComfyUI 0.33 when it "
                  "finds its source)", flush=True)
            continue
        except (WorkflowError, PromptFailed) as err:
            failures += 1
            print(f"[demo] FAILED {os.path.basename(path)}: {err}", file=sys.stderr, flush=True)
            continue
        if not images:
            failures += 1
            print(f"[demo] FAILED {panel.workflow}: the workflow saved no image", file=sys.stderr, flush=True)
        panels.append(panel)
        saved += images
        scores = {title: panel.score_line(title) for title in panel.scores}
        print(f"[demo] {panel.workflow} ({time.monotonic() - started:.0f} s): {panel_png(panel, dest)} {scores}", flush=True)
    if saved:
        contact_sheet(saved, os.path.join(dest, "contact_sheet.png"))
    if panels:
        print(f"[demo] page: {write_part(panels, dest, TINY_PART)}", flush=True)
    return panels, failures


def guidance_failures(panels: list[Panel]) -> list[str]:
    """Spatial, drag and self-guidance panels whose guided score is not better than the unguided one."""
    return [f"{p.workflow}: unguided {p.score_line(UNGUIDED_SCORE)} / guided {p.score_line(GUIDED_SCORE)}"
            for p in panels if p.kind in ASSERTED_KINDS and p.guided_is_better() is not True]


def main(names: list[str]) -> int:
    workflows = sorted(glob.glob(os.path.join(REPO, "example_workflows", "*.json")))
    workflows = [w for w in workflows if not names or os.path.basename(w) in names]
    if not workflows:
        print(f"[demo] no workflows in workflows/ {' '.join(names)}", file=sys.stderr)
        return 1
    size, steps = int(os.environ.get("DEMO_SIZE", "64")), int(os.environ.get("DEMO_STEPS", "10"))
    dest = os.environ.get("DEMO_OUTPUT") or os.path.join(REPO, "output")
    server_out = tempfile.mkdtemp(prefix="readout-demo-")
    server = start_server(comfyui_path(), server_out, os.path.join(server_out, "server.log"), temp_dir=server_out)
    print(f"[demo] ComfyUI server PID {server.process.pid} at {server.url}", flush=True)
    try:
        panels, failures = run_workflows(server, workflows, dest, size, steps)
    finally:
        stop_server(server)
        print(f"[demo] server {server.process.pid} stopped", flush=True)
    worse = guidance_failures(panels)
    for line in worse:
        print(f"[demo] GUIDANCE DID NOT HELP {line}", file=sys.stderr, flush=True)
    return 1 if failures or worse else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
