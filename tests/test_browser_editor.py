"""The real editor in headless Chromium: our workflows load and queue, and the drag points editor draws pairs."""
from __future__ import annotations

import copy
import io
import json
import os

import pytest
import requests

from PIL import Image

from browser import graph_to_prompt, load_workflow, missing_node_types, open_editor, queue, run_js, screenshot, wait_js
from comfy_server import PromptFailed
from tiny.models import TINY_SDXL_HEAD, tiny_head_name
from testbed import REPO
from tiny_names import fit_for_cpu
from workflow_api import ui_to_api

ActionChains = pytest.importorskip("selenium.webdriver.common.action_chains").ActionChains
BLANK_SIZE = 512  # image px the points editor shows without a reference image
WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "workflows")) if f.endswith(".json"))


def read_workflow(name: str) -> dict:
    with open(os.path.join(REPO, "workflows", name), encoding="utf-8") as f:
        return json.load(f)


def for_tiny_models(prompt: dict) -> dict:
    return fit_for_cpu(copy.deepcopy(prompt), 64, 4)


def nodes_and_inputs(prompt: dict) -> dict:
    """The prompt without the editor's `_meta` titles."""
    return {key: {"class_type": node["class_type"], "inputs": node["inputs"]} for key, node in prompt.items()}


def show_whole_graph(browser) -> None:
    run_js(browser, "await app.extensionManager.setting.set('LiteGraph.Canvas.LowQualityRenderingZoomThreshold', 0.1);"
           "await app.extensionManager.command.execute('Comfy.Canvas.FitView');"
           "await new Promise((r) => setTimeout(r, 600));")  # the view animates


def save_thumbnail(shot: str, name: str) -> None:
    """With UPDATE_WORKFLOW_THUMBNAILS=1, keep a small copy of the screenshot as workflows/<name>.png."""
    if os.environ.get("UPDATE_WORKFLOW_THUMBNAILS") != "1":
        return
    image = Image.open(shot).convert("RGB")
    image.thumbnail((800, 800))
    image.save(os.path.join(REPO, "workflows", name.replace(".json", ".png")), optimize=True)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_converts_and_runs_in_the_editor(browser, comfy_server, name):
    workflow = read_workflow(name)
    open_editor(browser, comfy_server)
    load_workflow(browser, workflow)
    assert missing_node_types(browser) == []
    show_whole_graph(browser)
    save_thumbnail(screenshot(browser, name.replace(".json", "_loaded")), name)
    assert os.path.exists(os.path.join(REPO, "workflows", name.replace(".json", ".png"))), "thumbnail missing"

    prompt = for_tiny_models(graph_to_prompt(browser))
    ours = for_tiny_models(ui_to_api(workflow, comfy_server.get("/object_info")))
    assert nodes_and_inputs(prompt) == ours, "scripts/workflow_api.ui_to_api disagrees with the editor's graphToPrompt"
    entry = comfy_server.wait(queue(browser, prompt))
    saved = [image for out in entry["outputs"].values() for image in out.get("images", []) if image["type"] == "output"]
    assert saved, f"the workflow saved no image: {entry['outputs']}"
    assert os.path.exists(os.path.join(comfy_server.output_dir, saved[0]["subfolder"], saved[0]["filename"]))


def test_wrong_head_for_the_model_shows_an_error_naming_head_and_family(browser, comfy_server):
    open_editor(browser, comfy_server)
    load_workflow(browser, read_workflow("sdxl_spatial.json"))
    prompt = for_tiny_models(graph_to_prompt(browser))
    for node in prompt.values():
        if node["class_type"] == "LoadReadoutHead":
            node["inputs"]["head_name"] = TINY_SDXL_HEAD
    with pytest.raises(PromptFailed) as failure:
        comfy_server.wait(queue(browser, prompt))
    message = f"head '{TINY_SDXL_HEAD}' expects SDXL features (9 decoder layers), but the model is SD1.5"
    assert message in str(failure.value)
    wait_js(browser, f"document.body.innerText.includes({json.dumps(message)})", timeout=30,
            what="the editor's error dialog")
    screenshot(browser, "wrong_head_error")


class PointsCanvas:
    """The points editor's canvas of the ReadoutDragTarget node: clicks and drags at reference-image pixels."""

    def __init__(self, browser, image_size=(BLANK_SIZE, BLANK_SIZE)):
        self.browser = browser
        self.image_size = image_size
        self.element = run_js(browser, """
            const canvas = app.graph._nodes.find((n) => n.type === "ReadoutDragTarget").pointsEditor.canvas;
            while (!canvas.isConnected || canvas.clientHeight < 200) await new Promise((r) => setTimeout(r, 50));
            return canvas;
        """)
        rect = browser.execute_script("const r = arguments[0].getBoundingClientRect();"
                                      "return [r.width, arguments[0].clientWidth, arguments[0].clientHeight];",
                                      self.element)
        # The image is letterboxed and centred; rect[0] / rect[1] is the frontend's CSS zoom of the element.
        self.pixel = min(rect[1] / image_size[0], rect[2] / image_size[1]) * rect[0] / rect[1]

    def offset(self, point) -> list[int]:
        """Selenium's offset (from the element's centre, in page px) of an image pixel."""
        return [round((p - size / 2) * self.pixel) for p, size in zip(point, self.image_size)]

    def at(self, point) -> ActionChains:
        return ActionChains(self.browser).move_to_element_with_offset(self.element, *self.offset(point))

    def click(self, point, right: bool = False) -> None:
        actions = self.at(point)
        (actions.context_click() if right else actions.click()).perform()

    def drag(self, start, end) -> None:
        dx, dy = (e - s for e, s in zip(self.offset(end), self.offset(start)))
        self.at(start).click_and_hold().move_by_offset(dx // 2, dy // 2) \
            .move_by_offset(dx - dx // 2, dy - dy // 2).release().perform()


def saved_pairs(browser) -> list:
    """The points widget's value in the serialized workflow, parsed."""
    return json.loads(run_js(browser, """
        const node = app.graph._nodes.find((n) => n.type === "ReadoutDragTarget");
        const index = node.widgets.findIndex((w) => w.name === "points");
        return app.graph.serialize().nodes.find((n) => n.id === node.id).widgets_values[index];
    """))


def assert_pairs(actual: list, expected: list, tolerance: float = 3.0) -> None:
    got = [(pair["source"], pair["target"]) for pair in actual]
    assert len(got) == len(expected), f"expected {len(expected)} pairs, got {actual}"
    for pair, wanted in zip(got, expected):
        for point, want in zip(pair, wanted):
            assert all(abs(p - w) <= tolerance for p, w in zip(point, want)), f"{actual} != {expected}"


def test_points_editor_adds_moves_and_deletes_pairs(browser, comfy_server):
    open_editor(browser, comfy_server)
    run_js(browser, """
        app.graph.clear();
        const node = LiteGraph.createNode("ReadoutDragTarget");
        node.pos = [120, 80];
        app.graph.add(node);
        node.setSize([420, 560]);
        app.canvas.ds.scale = 1.2;  // the frontend then scales the editor with a CSS transform
        app.canvas.ds.offset = [30, 40];
        app.graph.setDirtyCanvas(true, true);
    """)
    canvas = PointsCanvas(browser)
    a, b = ([100, 150], [300, 200]), ([400, 400], [250, 460])
    for point in (*a, *b):
        canvas.click(point)
    assert_pairs(saved_pairs(browser), [a, b])
    canvas.click(b[1], right=True)
    assert_pairs(saved_pairs(browser), [a])

    moved = [350, 260]
    canvas.drag(a[1], moved)
    assert_pairs(saved_pairs(browser), [(a[0], moved)])
    screenshot(browser, "points_editor")

    # Loading the saved workflow restores the drawing: the restored point is where a right-click deletes it.
    load_workflow(browser, run_js(browser, "return app.graph.serialize();"))
    PointsCanvas(browser).click(moved, right=True)
    assert saved_pairs(browser) == []


def upload_reference(server, size=(640, 320)) -> str:
    """A reference image uploaded into input/readout-tests/; its LoadImage value."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, (40, 90, 160))
    ImageDraw.Draw(image).ellipse((60, 40, 260, 240), fill=(240, 200, 60))
    png = io.BytesIO()
    image.save(png, format="PNG")
    reply = requests.post(server.url + "/upload/image", timeout=30,
                          files={"image": ("reference.png", png.getvalue(), "image/png")},
                          data={"subfolder": "readout-tests", "type": "input", "overwrite": "true"})
    reply.raise_for_status()
    return f"{reply.json()['subfolder']}/{reply.json()['name']}"


def test_points_editor_shows_the_reference_image_and_its_preview_after_a_run(browser, comfy_server):
    reference = upload_reference(comfy_server)
    open_editor(browser, comfy_server)
    drag_id = run_js(browser, """
        app.graph.clear();
        const add = (type, pos, values = {}) => {
            const node = LiteGraph.createNode(type);
            node.pos = pos;
            app.graph.add(node);
            for (const [name, value] of Object.entries(values)) node.widgets.find((w) => w.name === name).value = value;
            return node;
        };
        const image = add("LoadImage", [80, 400], { image: args[0] });
        const head = add("LoadReadoutHead", [80, 120], { head_name: args[1] });
        const drag = add("ReadoutDragTarget", [480, 100]);
        drag.setSize([520, 640]);
        const preview = add("PreviewAny", [1060, 120]);
        image.connect(0, drag, drag.findInputSlot("reference_image"));
        head.connect(0, drag, drag.findInputSlot("correspondence_head"));
        drag.connect(0, preview, 0);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset = [0, 0];
        app.graph.setDirtyCanvas(true, true);
        return drag.id;
    """, reference, tiny_head_name("correspondence"))
    wait_js(browser, "app.graph.getNodeById(%d).pointsEditor.image?.naturalWidth === 640" % drag_id,
            what="the LoadImage reference in the points editor")

    canvas = PointsCanvas(browser, image_size=(640, 320))
    pair = ([160, 140], [480, 200])
    for point in pair:
        canvas.click(point)
    assert_pairs(saved_pairs(browser), [pair])

    prompt = graph_to_prompt(browser)
    workflow = run_js(browser, "return app.graph.serialize();")
    node = str(drag_id)  # the editor's own widgets are neither sent nor saved: our converter agrees
    assert nodes_and_inputs(prompt)[node] == ui_to_api(workflow, comfy_server.get("/object_info"))[node]
    entry = comfy_server.wait(queue(browser, prompt))
    preview = entry["outputs"][str(drag_id)]["reference_preview"][0]
    assert preview["type"] == "temp"
    wait_js(browser, "app.graph.getNodeById(%d).pointsEditor.image?.src.includes('type=temp')" % drag_id,
            what="the reference_preview of the run in the points editor")
    screenshot(browser, "points_editor_reference")
