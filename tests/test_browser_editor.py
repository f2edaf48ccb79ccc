"""The real editor in headless Chromium: our workflows load and queue, and the drag points editor draws pairs."""
from __future__ import annotations

import copy
import importlib.metadata
import io
import json
import os
import time

import pytest
import requests

from PIL import Image

from browser import (click_run, graph_to_prompt, has_setting, load_workflow, missing_node_types, open_editor, queue,
                     read_execution_error, run_js, screenshot, set_setting, use_prompt_values, wait_js)
from testbed.server import PromptFailed
from tiny.models import tiny_head_name
from helpers import PREVIOUS_RELEASE, PREVIOUS_WORKFLOWS, PREVIOUS_WORKFLOWS_EVERY_NODE, previous_schema
from testbed import REPO
from testbed.tiny_names import fit_for_cpu
from testbed.workflow_api import ui_to_api

ActionChains = pytest.importorskip("selenium.webdriver.common.action_chains").ActionChains
BLANK_SIZE = 512  # image px the points editor shows without a reference image
EXAMPLE_PHOTO = "readout_example_photo.png"  # 512x512, in ComfyUI's input folder (scripts/example_images.py)
WORKFLOWS = sorted(f for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))


def read_workflow(name: str) -> dict:
    with open(os.path.join(REPO, "example_workflows", name), encoding="utf-8") as f:
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


def hide_missing_model_notices(browser) -> None:
    """Close the editor's issues overlay and its minimap: the test server lacks the real models an example names, so
    the overlay says "N issues found" over the graph that a user with the models does not see."""
    run_js(browser, "await app.extensionManager.setting.set('Comfy.Minimap.Visible', false);"
           "const pinia = document.querySelector('#vue-app')?.__vue_app__?.config.globalProperties.$pinia;"
           "for (const store of pinia?._s.values() ?? []) store.dismissErrorOverlay?.();"
           "await new Promise((r) => setTimeout(r, 300));")


def save_thumbnail(browser, name: str) -> None:
    """With UPDATE_WORKFLOW_THUMBNAILS=1, fit the whole graph in view and keep a small copy of a screenshot as
    example_workflows/<name>.jpg, the thumbnail the editor's template browser asks for."""
    if os.environ.get("UPDATE_WORKFLOW_THUMBNAILS") != "1":
        return
    hide_missing_model_notices(browser)
    show_whole_graph(browser)
    image = Image.open(screenshot(browser, name.replace(".json", "_loaded"))).convert("RGB")
    image.thumbnail((800, 800))
    image.save(os.path.join(REPO, "example_workflows", name.replace(".json", ".jpg")), quality=85, optimize=True)


_OBJECT_INFO: dict[str, dict] = {}


def object_info(server) -> dict:
    """The server's /object_info, read once per server for the workflow-loading tests (they add no files)."""
    if server.url not in _OBJECT_INFO:
        _OBJECT_INFO[server.url] = server.get("/object_info")
    return _OBJECT_INFO[server.url]


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_loads_and_converts_in_the_editor(editor, comfy_server, name):
    """Every example workflow loads with every node known and gives the editor's own prompt; the demo page test runs
    each of these prompts on the server, and the tests below queue from the editor. On the newest frontend only (it
    takes their thumbnails): the older frontends load the previous release's workflows below."""
    workflow = read_workflow(name)
    load_workflow(editor, workflow)
    assert missing_node_types(editor) == []
    save_thumbnail(editor, name)
    assert os.path.exists(os.path.join(REPO, "example_workflows", name.replace(".json", ".jpg"))), "thumbnail missing"

    prompt = for_tiny_models(graph_to_prompt(editor))
    ours = for_tiny_models(ui_to_api(workflow, object_info(comfy_server)))
    assert nodes_and_inputs(prompt) == ours, "testbed/workflow_api.ui_to_api disagrees with the editor's graphToPrompt"


@pytest.mark.every_frontend
def test_editor_serves_the_frontend_under_test(editor):
    """The frontend the editor runs is the venv's package, or the one COMFYUI_FRONTEND_ROOT serves (its version in
    COMFYUI_FRONTEND_VERSION): a leg that meant to test another frontend cannot test the installed one by mistake."""
    expected = os.environ.get("COMFYUI_FRONTEND_VERSION") or importlib.metadata.version("comfyui-frontend-package")
    assert run_js(editor, "return window.__COMFYUI_FRONTEND_VERSION__;") == expected


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.every_frontend)
                                  if name in PREVIOUS_WORKFLOWS_EVERY_NODE else name for name in PREVIOUS_WORKFLOWS])
def test_previous_release_workflow_loads_in_the_editor_unchanged(editor, comfy_server, name):
    """A workflow saved with the previous release (classic nodes) loads onto the V3 nodes: every node known, every
    widget value where it was and the inputs added since at their defaults, the same prompt as the file."""
    with open(os.path.join(PREVIOUS_RELEASE, "workflows", name), encoding="utf-8") as f:
        workflow = json.load(f)
    load_workflow(editor, workflow)
    assert missing_node_types(editor) == []
    info, before = object_info(comfy_server), previous_schema()
    loaded = {n["id"]: n.get("widgets_values") or [] for n in run_js(editor, "return app.graph.serialize().nodes;")}
    for node in workflow["nodes"]:
        if node["type"] in before:
            saved = node.get("widgets_values") or []
            assert loaded[node["id"]] == saved + added_widget_defaults(info[node["type"]], before[node["type"]])
    assert nodes_and_inputs(graph_to_prompt(editor)) == ui_to_api(workflow, info)


def added_widget_defaults(now: dict, before: dict) -> list:
    """The defaults of the widget inputs a node gained since the previous release (appended after its own)."""
    known = {name for section in before["input"].values() for name in section}
    return [spec[1]["default"] for section in ("required", "optional")
            for name, spec in now["input"].get(section, {}).items()
            if name not in known and isinstance(spec[1], dict) and "default" in spec[1]]


def with_input(class_type: str, name: str, value):
    """Set one input of every node of a type in an API prompt."""
    def change(prompt: dict) -> dict:
        for node in prompt.values():
            if node["class_type"] == class_type:
                node["inputs"][name] = value
        return prompt
    return change


NODE_ERRORS = {  # workflow, the user's mistake, the nodes that may fail first, what the editor must show
    "sdxl_head_on_sd15": ("spatial_pose.json",
                          with_input("LoadReadoutHead", "head_name", tiny_head_name("pose", family="sdxl")),
                          ("KSampler (Readout Guidance)", "Extract Readout"),  # both read the head; executors order them
                          f"head '{tiny_head_name('pose', family='sdxl')}' expects SDXL features (9 decoder layers), "
                          "but the model is SD1.5"),
    "bad_points_json": ("drag_generated.json", with_input("ReadoutDragTarget", "points", '[{"source": [10, 10], '),
                        ("Readout Drag Target",),
                        "points: not valid JSON (Expecting property name enclosed in double quotes at character 21)"),
    "missing_target": ("drag_generated.json", with_input("ReadoutDragTarget", "points", '[{"source": [10, 10]}]'),
                       ("Readout Drag Target",), "points: pair 1 has no target: every source needs a target"),
}


ERROR_ON_EVERY_FRONTEND = "bad_points_json"
"""The case older frontends run: they differ in how an execution error reaches the user, not in which error."""


@pytest.mark.parametrize("case", [pytest.param(case, marks=pytest.mark.every_frontend) if case == ERROR_ON_EVERY_FRONTEND
                                  else case for case in NODE_ERRORS])
def test_node_errors_reach_the_user_in_the_editor(browser, comfy_server, case):
    name, mistake, failing_nodes, message = NODE_ERRORS[case]
    open_editor(browser, comfy_server)
    load_workflow(browser, read_workflow(name))
    prompt = mistake(for_tiny_models(graph_to_prompt(browser)))
    use_prompt_values(browser, prompt)  # the graph the user runs is the prompt: no missing-model warnings
    assert nodes_and_inputs(graph_to_prompt(browser)) == nodes_and_inputs(prompt)
    with pytest.raises(PromptFailed) as failure:
        comfy_server.wait(click_run(browser, comfy_server))
    assert message in str(failure.value)
    overlay = read_execution_error(browser, message)
    # the only error (no missing models), on a node that reads the mistaken input
    headline = None if overlay is None else overlay.removeprefix("Error").strip()  # 1.58 heads the overlay "Error"
    assert headline is None or headline.startswith(tuple(f"{node} failed" for node in failing_nodes)), overlay
    screenshot(browser, f"error_{case}")


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
        // ids: strings in memory on the new frontend, numbers in serialize()
        return app.graph.serialize().nodes.find((n) => String(n.id) === String(node.id)).widgets_values[index];
    """))


def assert_pairs(actual: list, expected: list, tolerance: float = 3.0) -> None:
    got = [(pair["source"], pair["target"]) for pair in actual]
    assert len(got) == len(expected), f"expected {len(expected)} pairs, got {actual}"
    for pair, wanted in zip(got, expected):
        for point, want in zip(pair, wanted):
            assert all(abs(p - w) <= tolerance for p, w in zip(point, want)), f"{actual} != {expected}"


def editor_in_node(browser) -> tuple[float, float, float]:
    """The points editor's left and right edges and the node's width, as fractions of the node's screen box."""
    return tuple(run_js(browser, """
        const node = app.graph._nodes.find((n) => n.type === "ReadoutDragTarget");
        await new Promise((r) => setTimeout(r, 300));  // the frontend lays out DOM widgets on the next frames
        const { scale, offset } = app.canvas.ds;
        const box = app.canvas.canvas.getBoundingClientRect();
        const left = box.left + (node.pos[0] + offset[0]) * scale, width = node.size[0] * scale;
        const rect = node.pointsEditor.canvas.getBoundingClientRect();
        return [(rect.left - left) / width, (rect.right - left) / width, rect.width / width];
    """))


@pytest.fixture(params=[False, True], ids=["classic_nodes", "nodes_2"])
def nodes_2(request, browser, comfy_server):
    """The editor with "Nodes 2.0" (Vue nodes) off or on; afterwards off again, side panel closed."""
    open_editor(browser, comfy_server)
    if request.param and not has_setting(browser, "Comfy.RightSidePanel.IsOpen"):
        pytest.skip("this frontend's Nodes 2.0 is an early preview (frontend 1.32.9: it lays nodes out anew, losing "
                    "the positions and sizes a script gives them); Nodes 2.0 is tested on the frontend with the side panel")
    run_js(browser, "app.graph.clear(); app.graph.add(LiteGraph.createNode('Note'));")  # the setting wants a graph
    set_setting(browser, "Comfy.VueNodes.Enabled", request.param)
    yield request.param
    if has_setting(browser, "Comfy.RightSidePanel.IsOpen"):
        set_setting(browser, "Comfy.RightSidePanel.IsOpen", False)
    set_setting(browser, "Comfy.VueNodes.Enabled", False)


def report_in_view(browser, node_id, widget: str, timeout: float = 60) -> str:
    """The text of a node's report box, read once the node is in view at zoom 1 and the box is drawn there."""
    deadline = time.time() + timeout
    while True:
        text = run_js(browser, """
            const node = app.graph.getNodeById(args[0]);
            app.canvas.ds.scale = 1;
            app.canvas.ds.offset = [100 - node.pos[0], 100 - node.pos[1]];
            app.graph.setDirtyCanvas(true, true);
            await new Promise((r) => setTimeout(r, 300));
            const box = node.widgets?.find((w) => w.name === args[1])?.element;
            return box?.isConnected && box.getClientRects().length > 0 && box.value ? box.value : null;
        """, node_id, widget)
        if text:
            return text
        assert time.time() < deadline, f"node {node_id} shows no {widget} box after the run"


REPORT_WIDGETS = {"LoadReadoutHead": "head_info", "ReadoutGuidedKSampler": "guidance_report"}  # web/head_info.js


@pytest.mark.every_frontend
def test_head_info_and_guidance_report_show_on_their_nodes_after_a_run(browser, comfy_server, nodes_2):
    import folder_paths

    load_workflow(browser, read_workflow("spatial_depth.json"))
    prompt = for_tiny_models(graph_to_prompt(browser))
    for node in prompt.values():  # nothing cached from an earlier run: the sampler and the head loader run again
        if node["class_type"] == "ReadoutGuidedKSampler":
            node["inputs"]["seed"] = 1000 + int(nodes_2)
        if node["class_type"] == "LoadReadoutHead":
            os.utime(folder_paths.get_full_path("readout_heads", node["inputs"]["head_name"]))
    use_prompt_values(browser, prompt)
    before = {n["id"]: n.get("widgets_values") for n in run_js(browser, "return app.graph.serialize().nodes;")
              if n["type"] in REPORT_WIDGETS}
    comfy_server.wait(click_run(browser, comfy_server))
    ids = run_js(browser, "return app.graph._nodes.filter((n) => n.type in args[0]).map((n) => [n.id, n.type]);",
                 REPORT_WIDGETS)
    shown = [(kind, report_in_view(browser, node_id, REPORT_WIDGETS[kind])) for node_id, kind in ids]
    heads = [text for kind, text in shown if kind == "LoadReadoutHead"]
    reports = [text for kind, text in shown if kind == "ReadoutGuidedKSampler"]
    assert heads and all("depth head for SD1.5" in text for text in heads), shown
    assert reports and all("depth" in text for text in reports), shown
    saved = {n["id"]: n.get("widgets_values") for n in run_js(browser, "return app.graph.serialize().nodes;")
             if n["type"] in REPORT_WIDGETS}
    assert saved == before, "a report box was saved into the workflow"
    screenshot(browser, f"report_widgets_{'nodes_2' if nodes_2 else 'classic'}")


@pytest.mark.every_frontend
def test_points_editor_adds_moves_and_deletes_pairs(browser, nodes_2):
    run_js(browser, """
        app.graph.clear();
        const node = LiteGraph.createNode("ReadoutDragTarget");
        node.pos = [420, 80];
        app.graph.add(node);
        node.setSize([420, 560]);
        const image = LiteGraph.createNode("LoadImage");  // a 512 px reference: the same pixels as the blank canvas
        image.pos = [80, 80];
        app.graph.add(image);
        image.widgets.find((w) => w.name === "image").value = args[0];
        image.connect(0, node, node.findInputSlot("reference_image"));
        await new Promise((r) => setTimeout(r, 300));  // Nodes 2.0 may lay the node out anew: view it where it is
        app.canvas.ds.scale = 1.2;  // the frontend then scales the editor with a CSS transform
        app.canvas.ds.offset = [150 / 1.2 - node.pos[0], 100 / 1.2 - node.pos[1]];
        app.canvas.selectNode(node);
        app.graph.setDirtyCanvas(true, true);
    """, EXAMPLE_PHOTO)
    wait_js(browser, "app.graph._nodes.find((n) => n.type === 'ReadoutDragTarget').pointsEditor.image?.naturalWidth === "
            f"{BLANK_SIZE}", what="the LoadImage reference in the points editor")
    closed = editor_in_node(browser)
    if has_setting(browser, "Comfy.RightSidePanel.IsOpen"):  # the new frontend's side panel, on the selected node
        set_setting(browser, "Comfy.RightSidePanel.IsOpen", True)
        assert editor_in_node(browser) == pytest.approx(closed, abs=0.01), "the side panel moved or resized the editor"
    left, right, width = closed
    assert left >= 0 and right <= 1 and width > 0.85, f"the editor is not inside its node: {closed}"
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
    screenshot(browser, "points_editor_nodes_2" if nodes_2 else "points_editor")

    # Loading the saved workflow restores the drawing: the restored point is where a right-click deletes it.
    load_workflow(browser, run_js(browser, "return app.graph.serialize();"))
    PointsCanvas(browser).click(moved, right=True)
    assert saved_pairs(browser) == []

    # A removed node lets its editor go: the resize observer is disconnected and the redraw loop stops.
    released = run_js(browser, """
        const node = app.graph._nodes.find((n) => n.type === "ReadoutDragTarget");
        const editor = node.pointsEditor;
        let disconnected = false;
        const disconnect = editor.resizeObserver.disconnect.bind(editor.resizeObserver);
        editor.resizeObserver.disconnect = () => { disconnected = true; disconnect(); };
        app.graph.remove(node);
        return [disconnected, editor.removed];
    """)
    assert released == [True, True]


def head_info_shown_and_saved(browser) -> tuple[str, dict]:
    """After a run: the LoadReadoutHead node's head_info text and the node as the saved workflow has it."""
    find = "app.graph._nodes.find((n) => n.type === 'LoadReadoutHead')"
    wait_js(browser, f"{find}.widgets.find((w) => w.name === 'head_info')?.value", what="the head_info text")
    return tuple(run_js(browser, f"""
        const head = {find};
        const saved = app.graph.serialize().nodes.find((n) => String(n.id) === String(head.id));
        return [head.widgets.find((w) => w.name === "head_info").value, saved];
    """))


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


@pytest.mark.every_frontend
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
        // not the workflow tests' cached head (a cached node sends no head_info)
        const head = add("LoadReadoutHead", [80, 120], { head_name: args[1], timestep_embedding: args[2] });
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
    """, reference, tiny_head_name("correspondence"), "E(1000-t) (official training)")
    wait_js(browser, f"app.graph.getNodeById({json.dumps(drag_id)}).pointsEditor.image?.naturalWidth === 640",
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
    info, saved = head_info_shown_and_saved(browser)
    assert info.startswith(f"{tiny_head_name('correspondence')}: ") and "SD1.5" in info, info
    assert info not in json.dumps(saved), f"head_info was saved in the workflow: {saved}"
    preview = entry["outputs"][str(drag_id)]["reference_preview"][0]
    assert preview["type"] == "temp"
    wait_js(browser, f"app.graph.getNodeById({json.dumps(drag_id)}).pointsEditor.image?.src.includes('type=temp')",
            what="the reference_preview of the run in the points editor")
    screenshot(browser, "points_editor_reference")
