"""What the pack gives the editor beside its nodes, seen in the real editor: the example workflows in the templates
browser (listed, with their thumbnails, and one opened from there and run), a node's help page, and the official
heads' download links in the missing-models panel."""
from __future__ import annotations

import json
import os
import re
import time

import pytest

from browser import (click_run, graph_to_prompt, has_setting, load_workflow, open_editor, run_js, screenshot,
                     set_setting, wait_js)
from testbed import PACK_LINK_NAME, REPO
from testbed.workflow_api import ui_to_api
from test_browser_editor import for_tiny_models, nodes_and_inputs, read_workflow

By = pytest.importorskip("selenium.webdriver.common.by").By
EXAMPLES = sorted(f[:-len(".json")] for f in os.listdir(os.path.join(REPO, "example_workflows")) if f.endswith(".json"))
RUN_FROM_TEMPLATES = "text_to_image"
"""The example opened from the templates browser and run: the lightest (one sampler). spatial_depth would run the pack's
nodes too, at about twice the test's time (two samplers, one guided; the editor tests run it on every frontend)."""
HELP_NODE = "ReadoutTarget"  # its help page has an image
HEAD = "readout_sdv15_spatial_depth.pt"  # the official head spatial_depth.json names (with its download metadata)

_DIALOG = "document.querySelector('[role=dialog]')"
_PACK_CATEGORY = (f"[...({_DIALOG}?.querySelectorAll('[role=button]') ?? [])]"
                  f".find((e) => e.innerText.trim() === {json.dumps(PACK_LINK_NAME)})")
_CARDS = (f"[...({_DIALOG}?.querySelectorAll("
          "'[data-testid^=\"template-workflow-\"]:not([data-testid=\"template-workflow-detail\"])') ?? [])]")
"""The template cards the dialog shows: data-testid template-workflow-<name> on frontends 1.32 to 1.58 (not 1.58's
template-workflow-detail, the view of one template)."""


def template_cards(browser) -> list[str]:
    return browser.execute_script(f"return {_CARDS}.map((c) => c.dataset.testid.replace('template-workflow-', ''));")


def thumbnails(browser) -> dict[str, list]:
    """Each card's thumbnail, scrolled into view (the dialog mounts the images of the cards in view only):
    {name: [alt, naturalWidth]}, naturalWidth 0 where the image did not load in 10 s."""
    return run_js(browser, f"""
        const shown = {{}};
        for (const card of {_CARDS}) {{
            card.scrollIntoView({{ block: "center" }});
            const start = performance.now();
            let image = null;
            while (performance.now() - start < 10000) {{
                image = card.querySelector("img");
                if (image?.complete && image.naturalWidth > 0) break;
                await new Promise((r) => setTimeout(r, 50));
            }}
            const name = card.dataset.testid.replace("template-workflow-", "");
            shown[name] = [image?.alt ?? null, image?.naturalWidth ?? 0];
        }}
        return shown;
    """)


def record_requests(browser) -> None:
    """Keep the timing of every request the page makes from now on (the browser keeps 250 by default: the editor's
    start-up fills that), for `fetched`."""
    browser.execute_script("performance.setResourceTimingBufferSize(100000); performance.clearResourceTimings();")


def fetched(browser, path_end: str) -> list[int]:
    """The HTTP statuses of the page's requests since record_requests whose URL ends with path_end."""
    return browser.execute_script("return performance.getEntriesByType('resource')"
                                  ".filter((e) => e.name.split('?')[0].endsWith(arguments[0]))"
                                  ".map((e) => e.responseStatus);", path_end)


def graph_nodes(browser) -> list:
    return sorted(run_js(browser, "return app.graph.serialize().nodes.map((n) => [n.id, n.type]);"))


@pytest.mark.every_frontend
def test_example_workflows_open_from_the_templates_browser_and_run(browser, comfy_server):
    """The templates browser (the sidebar's Templates button) lists every example workflow under the pack's
    category with its <name>.jpg thumbnail; clicking one opens it (the prompt of the example's file), and it runs on
    the tiny models from the editor, its image saved and shown."""
    assert sorted(comfy_server.get("/workflow_templates").get(PACK_LINK_NAME, [])) == EXAMPLES
    open_editor(browser, comfy_server)
    record_requests(browser)
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Templates']").click()
    wait_js(browser, _PACK_CATEGORY, timeout=30, what=f"the templates browser's {PACK_LINK_NAME} category")
    browser.execute_script(f"return {_PACK_CATEGORY};").click()
    deadline = time.time() + 30
    while sorted(template_cards(browser)) != EXAMPLES and time.time() < deadline:
        time.sleep(0.2)
    assert sorted(template_cards(browser)) == EXAMPLES, "the pack's category lists other workflows than the examples"

    shown = thumbnails(browser)
    screenshot(browser, "templates_browser")
    assert {name: alt for name, (alt, _) in shown.items()} == {name: name for name in EXAMPLES}
    assert [name for name, (_, width) in shown.items() if not width] == [], "thumbnails that did not load"
    thumbnail = f"/workflow_templates/{PACK_LINK_NAME}/{{}}.jpg"
    missing = [name for name in EXAMPLES if 200 not in fetched(browser, thumbnail.format(name))]
    assert missing == [], f"no <name>.jpg thumbnail was fetched for {missing}"

    workflow = read_workflow(f"{RUN_FROM_TEMPLATES}.json")
    wanted = sorted([node["id"], node["type"]] for node in workflow["nodes"])
    card = browser.execute_script(f"return {_CARDS}.find((c) => c.dataset.testid === arguments[0]);",
                                  f"template-workflow-{RUN_FROM_TEMPLATES}")
    browser.execute_script("arguments[0].scrollIntoView({ block: 'center' });", card)
    card.click()
    deadline = time.time() + 30
    while graph_nodes(browser) != wanted and time.time() < deadline:
        time.sleep(0.2)
    assert graph_nodes(browser) == wanted, "the graph is not the clicked example workflow"
    assert not browser.execute_script(f"return !!{_CARDS}.length;"), "the templates browser stayed open"
    assert 200 in fetched(browser, f"/workflow_templates/{PACK_LINK_NAME}/{RUN_FROM_TEMPLATES}.json")

    prompt = for_tiny_models(graph_to_prompt(browser))
    assert nodes_and_inputs(prompt) == for_tiny_models(ui_to_api(workflow, comfy_server.get("/object_info"))), \
        "the graph opened from the templates browser gives another prompt than the example workflow's file"
    use_tiny_models(browser, prompt)
    assert nodes_and_inputs(graph_to_prompt(browser)) == nodes_and_inputs(prompt)
    entry = comfy_server.wait(click_run(browser, comfy_server))
    saves = [key for key, node in prompt.items() if node["class_type"] == "SaveImage"]
    images = [image for key in saves for image in entry["outputs"].get(key, {}).get("images", [])]
    assert saves and images, f"the run saved no image: {entry['outputs']}"
    for image in images:
        assert os.path.isfile(os.path.join(comfy_server.output_dir, image["subfolder"], image["filename"]))
    wait_js(browser, f"{json.dumps(saves)}.every((id) => app.nodeOutputs[id]?.images?.length)", timeout=30,
            what="the editor to receive the saved images")
    screenshot(browser, "templates_browser_run")


def use_tiny_models(browser, prompt: dict) -> None:
    """Set the loaded graph's widgets to an API prompt's values (tiny model names, a small canvas, few steps), as a
    user picks them in the widgets; the graph stays the tab the templates browser opened."""
    run_js(browser, """
        for (const [id, entry] of Object.entries(args[0])) {
            const node = app.graph.getNodeById(id) ?? app.graph.getNodeById(Number(id));
            for (const [name, value] of Object.entries(entry.inputs)) {
                const widget = Array.isArray(value) ? null : node?.widgets?.find((w) => w.name === name);
                if (widget) { widget.value = value; widget.callback?.(value); }
            }
        }
        app.graph.setDirtyCanvas(true, true);
    """, prompt)


def help_page(name: str) -> dict:
    """What web/docs/<name>.md shows: its title, its paragraphs (plain text), its input names and its image."""
    with open(os.path.join(REPO, "web", "docs", f"{name}.md"), encoding="utf-8") as f:
        text = f.read()
    blocks = [block.strip() for block in text.split("\n\n") if block.strip()]
    images = re.findall(r"!\[([^\]]*)\]\(([^)]+)\)", text)
    assert len(images) == 1, f"{name}.md: expected one image, found {images}"
    inputs = text.split("## Inputs", 1)[1].split("## Outputs", 1)[0]
    return {
        "title": blocks[0].removeprefix("# "),
        "paragraphs": [block.replace("`", "") for block in blocks[1:]
                       if not block.startswith(("#", "|", "!["))],
        "inputs": re.findall(r"^\| `([^`]+)` \|", inputs, flags=re.M),
        "image": images[0],
    }


def click_node_title(browser, node_id) -> None:
    """A real click on a node's title bar (selects the node as a user does)."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas, x, y = run_js(browser, """
        const node = app.graph.getNodeById(args[0]);
        const { scale, offset } = app.canvas.ds;
        const box = app.canvas.canvas.getBoundingClientRect();
        const x = (node.pos[0] + offset[0] + 40) * scale;
        const y = (node.pos[1] + offset[1] - LiteGraph.NODE_TITLE_HEIGHT / 2) * scale;
        return [app.canvas.canvas, x - box.width / 2, y - box.height / 2];
    """, node_id)
    ActionChains(browser).move_to_element_with_offset(canvas, round(x), round(y)).click().perform()


def close_side_panel(browser) -> None:
    """Close the newer frontends' right side panel (its open state is a saved setting: it would stay open)."""
    if has_setting(browser, "Comfy.RightSidePanel.IsOpen"):
        set_setting(browser, "Comfy.RightSidePanel.IsOpen", False)


@pytest.mark.every_frontend
def test_node_help_panel_shows_the_packs_help_page(browser, comfy_server):
    """Selecting one of our nodes (a click on its title) and clicking the selection toolbox's Node Info button shows
    web/docs/<node>.md: its title, text and inputs, and its image loaded. Frontends differ in where: the right side
    panel's Info tab (1.49, 1.58), the node library's help (1.32)."""
    page = help_page(HELP_NODE)
    open_editor(browser, comfy_server)
    record_requests(browser)
    try:
        node_id = run_js(browser, """
            app.graph.clear();
            const node = LiteGraph.createNode(args[0]);
            node.pos = [300, 200];
            app.graph.add(node);
            app.canvas.ds.scale = 1;
            app.canvas.ds.offset = [0, 0];
            app.graph.setDirtyCanvas(true, true);
            await new Promise((r) => setTimeout(r, 300));
            return node.id;
        """, HELP_NODE)
        click_node_title(browser, node_id)
        wait_js(browser, f"app.canvas.selected_nodes[{json.dumps(node_id)}]", timeout=10,
                what="the click to select the node")
        wait_js(browser, "document.querySelector('[data-testid=info-button]')?.offsetParent", timeout=10,
                what="the selection toolbox's Node Info button")
        browser.find_element(By.CSS_SELECTOR, "[data-testid=info-button]").click()
        help_box = "document.querySelector('.node-help-content')"
        wait_js(browser, f"{help_box}?.innerText.includes({json.dumps(page['paragraphs'][-1])})", timeout=20,
                what=f"the help panel with {HELP_NODE}.md")
        shown = run_js(browser, f"""
            const box = {help_box};
            const image = box.querySelector("img");
            const start = performance.now();
            while (!(image?.complete) && performance.now() - start < 10000) await new Promise((r) => setTimeout(r, 50));
            return {{
                title: box.querySelector("h1")?.innerText.trim(),
                text: box.innerText.replace(/\\s+/g, " "),
                inputs: [...box.querySelectorAll("table")].flatMap((t) => [...t.querySelectorAll("tbody tr")]
                    .map((row) => row.cells[0]?.innerText.trim())),
                image: image && [image.alt, image.src, image.naturalWidth],
            }};
        """)
        screenshot(browser, "node_help")
    finally:
        close_side_panel(browser)
    assert shown["title"] == page["title"]
    for paragraph in page["paragraphs"]:
        assert " ".join(paragraph.split()) in shown["text"]
    assert shown["inputs"][:len(page["inputs"])] == page["inputs"], "the first table is not the page's inputs"
    alt, src = page["image"]
    assert shown["image"] is not None, "the help page shows no image"
    assert shown["image"][:2] == [alt, f"{comfy_server.url}/extensions/{PACK_LINK_NAME}/docs/{src}"]
    assert shown["image"][2] > 0, f"the help page's image did not load: {shown['image']}"
    assert 200 in fetched(browser, f"/extensions/{PACK_LINK_NAME}/docs/{HELP_NODE}.md")


def test_missing_official_head_is_listed_with_its_download_link(browser, comfy_server):
    """An example workflow whose official head is not installed: the editor's missing-models panel lists the head
    under readout_heads, and its Download button opens the Hugging Face URL of the node's `models` metadata.
    On the newest frontend (1.49.6 shows the same panel)."""
    workflow = read_workflow("spatial_depth.json")
    [head] = [node for node in workflow["nodes"] if node["type"] == "LoadReadoutHead"]
    [model] = head["properties"]["models"]
    assert model["name"] == HEAD and model["directory"] == "readout_heads"
    assert model["url"].startswith("https://huggingface.co/")
    heads = comfy_server.get("/object_info/LoadReadoutHead")["LoadReadoutHead"]["input"]["required"]["head_name"]
    assert HEAD not in json.dumps(heads), f"the test bed has {HEAD}: the editor would not list it as missing"

    open_editor(browser, comfy_server)
    if not has_setting(browser, "Comfy.RightSidePanel.IsOpen"):
        pytest.skip("frontend 1.32.9 (ComfyUI 0.3.75) lists missing models in a dialog of its own, and refuses to "
                    "download a .pt file there (only .safetensors and .sft): tested on the frontends with the side "
                    "panel (1.49.6, 1.58.1)")
    try:
        load_workflow(browser, workflow)
        details = "[...document.querySelectorAll('button')].find((b) => b.innerText.trim() === 'View details')"
        wait_js(browser, details, timeout=20, what="the issues overlay's View details button")
        browser.execute_script(f"return {details};").click()
        download = f"button[aria-label='Download {HEAD}']"
        wait_js(browser, f"document.querySelector({json.dumps(download)})?.offsetParent", timeout=20,
                what=f"the missing-models panel's Download button for {HEAD}")
        row = run_js(browser, """
            let row = document.querySelector(args[0]);  // up to the row's name: the row of the head, not the list
            while (row.parentElement && !row.innerText.replace(/\s+/g, "").includes(args[1])) row = row.parentElement;
            return row.innerText;
        """, download, HEAD)
        screenshot(browser, "missing_models")
        # The Download button opens the URL in a new tab through an <a download> it clicks: record it instead.
        run_js(browser, """
            window.__opened = [];
            const click = HTMLAnchorElement.prototype.click;
            HTMLAnchorElement.prototype.click = function () {
                window.__opened.push([this.href, this.download, this.target]);
                HTMLAnchorElement.prototype.click = click;
            };
        """)
        browser.find_element(By.CSS_SELECTOR, download).click()
        wait_js(browser, "window.__opened.length", timeout=10, what="the Download button to open a link")
        opened = browser.execute_script("return window.__opened;")
    finally:
        close_side_panel(browser)
    lines = [line.strip() for line in row.splitlines() if line.strip()]
    # the row's category line: the folder, and the file size where the editor could look it up (" · 1.2 MB")
    assert [line.split(" · ")[0] for line in lines].count(model["directory"]) == 1, row
    assert "v1-5-pruned-emaonly.safetensors" not in row, row
    assert opened == [[model["url"], HEAD, "_blank"]]
