"""`make demo`: run every workflow in workflows/ on a real ComfyUI server with the tiny models.

Model and head file names are swapped for the tiny ones, the canvas is capped at DEMO_SIZE pixels
(default 64) and steps at DEMO_STEPS (default 10), so the demo takes minutes on a CPU; images land in output/.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile

from comfy_server import PromptFailed, start_server, stop_server
from testbed import REPO, comfyui_path
from tiny_names import fit_for_cpu
from workflow_api import WorkflowError, ui_to_api


def copy_images(entry: dict, server_out: str, dest: str, stem: str) -> list[str]:
    """Copy the images a finished prompt saved into dest, named after the workflow."""
    copied = []
    for node_out in entry.get("outputs", {}).values():
        for image in node_out.get("images", []):
            if image.get("type") != "output":
                continue
            src = os.path.join(server_out, image.get("subfolder", ""), image["filename"])
            target = os.path.join(dest, f"{stem}__{image['filename']}")
            shutil.copyfile(src, target)
            copied.append(target)
    return copied


def contact_sheet(images: list[str], path: str, cell: int = 160) -> None:
    """One picture of every image the demo wrote, each labelled with its file name."""
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


def run_demo(workflows: list[str], dest: str, size: int, steps: int) -> int:
    os.makedirs(dest, exist_ok=True)
    server_out = tempfile.mkdtemp(prefix="readout-demo-")
    server = start_server(comfyui_path(), server_out, os.path.join(server_out, "server.log"))
    print(f"[demo] ComfyUI server PID {server.process.pid} at {server.url}", flush=True)
    failures = 0
    written: list[str] = []
    try:
        object_info = server.get("/object_info")
        for path in workflows:
            stem = os.path.splitext(os.path.basename(path))[0]
            try:
                with open(path, encoding="utf-8") as f:
                    prompt = fit_for_cpu(ui_to_api(json.load(f), object_info), size, steps)
                entry = server.run(prompt)
            except (WorkflowError, PromptFailed) as err:
                failures += 1
                print(f"[demo] FAILED {stem}: {err}", file=sys.stderr, flush=True)
                continue
            images = copy_images(entry, server_out, dest, stem)
            if not images:
                failures += 1
                print(f"[demo] FAILED {stem}: the workflow saved no image", file=sys.stderr, flush=True)
            for image in images:
                print(f"[demo] {stem}: {image}", flush=True)
            written += images
    finally:
        stop_server(server)
        print(f"[demo] server {server.process.pid} stopped", flush=True)
    if written:
        contact_sheet(written, os.path.join(dest, "contact_sheet.png"))
        print(f"[demo] all images: {os.path.join(dest, 'contact_sheet.png')}", flush=True)
    return 1 if failures else 0


def main() -> int:
    workflows = sorted(glob.glob(os.path.join(REPO, "workflows", "*.json")))
    if not workflows:
        print("[demo] no workflows in workflows/", file=sys.stderr)
        return 1
    size, steps = int(os.environ.get("DEMO_SIZE", "64")), int(os.environ.get("DEMO_STEPS", "10"))
    return run_demo(workflows, os.path.join(REPO, "output"), size, steps)


if __name__ == "__main__":
    sys.exit(main())
