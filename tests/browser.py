"""Headless Chromium (Selenium) driving the real ComfyUI editor served by the `comfy_server` fixture."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, Iterator

import pytest

from testbed.server import ComfyServer
from testbed import REPO

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--window-size=1600,1000",
)
ARTIFACTS = os.path.join(REPO, "test-artifacts")
FRONTEND_ONLY_TYPES = ("Note", "MarkdownNote", "Reroute", "PrimitiveNode")

# Runs an async function body in the page; Selenium's callback gets {value} or {error} (JS errors as text).
_ASYNC_WRAPPER = """
const done = arguments[arguments.length - 1];
const args = Array.from(arguments).slice(0, -1);
(async (...args) => { %s })(...args).then(
  (value) => done({ value: value === undefined ? null : value }),
  (error) => done({ error: String(error && error.stack || error) }));
"""


@pytest.fixture
def browser(chromium) -> Iterator[Any]:
    """The session's Chromium for one test; afterwards it shows a blank page, so that an editor left open does not
    keep rendering (a core's worth of CPU while a prompt runs) through the tests that follow."""
    yield chromium
    chromium.get("about:blank")


@pytest.fixture(scope="module")
def editor_kept_open(chromium) -> Iterator[None]:
    """The module's end for the `editor` fixture: a blank page, as `browser` leaves after each test."""
    yield
    chromium.get("about:blank")


@pytest.fixture
def editor(chromium, comfy_server, editor_kept_open) -> Any:
    """Chromium showing the editor, for tests that only load workflows and read the graph: kept open from one such
    test to the next (loading replaces the whole graph), opened anew after a test that left another page."""
    if not showing_editor(chromium, comfy_server):
        open_editor(chromium, comfy_server)
    return chromium


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    """A headless Chromium driven by Selenium for the whole session, with a throwaway profile."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: scripts/setup_testbed.py installs Debian's chromium and "
                    "chromium-driver with apt-get (it could not here)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed in this venv: run scripts/setup_testbed.py")
    profile = tempfile.mkdtemp(prefix="rg-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def run_js(browser: Any, body: str, *args: Any) -> Any:
    """Run an async JS function body (`args` holds the arguments) in the page and return its JSON result."""
    result = browser.execute_async_script(_ASYNC_WRAPPER % body, *args)
    if "error" in result:
        raise AssertionError(f"JavaScript failed: {result['error']}")
    return result["value"]


def wait_js(browser: Any, condition: str, timeout: float = 60, what: str = "") -> None:
    """Wait until a JS expression is truthy."""
    deadline = time.time() + timeout
    while not browser.execute_script(f"try {{ return !!({condition}); }} catch (e) {{ return false; }}"):
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}; "
                                 f"browser console:\n{console_log(browser)}")
        time.sleep(0.2)


def console_log(browser: Any) -> str:
    """The browser console messages so far (for failure messages)."""
    return "\n".join(f"{entry['level']}: {entry['message']}" for entry in browser.get_log("browser"))[-4000:]


def open_editor(browser: Any, server: ComfyServer) -> None:
    """Load the editor and wait until the graph exists and every node definition of the server is registered.

    Workflow persistence is turned off first: otherwise the editor restores the previous test's graph from browser
    storage at start-up, sometimes after a test has loaded its own."""
    server.post("/settings", {"Comfy.Workflow.Persist": False})
    browser.get(server.url)
    wait_js(browser, "window.app && app.graph && app.canvas && window.LiteGraph", what="the editor to start")
    wait_js(browser, "LiteGraph.registered_node_types['KSampler'] && LiteGraph.registered_node_types['LoadReadoutHead']",
            what="the node definitions to be registered")


def showing_editor(browser: Any, server: ComfyServer) -> bool:
    """Whether the page is this server's editor, started (the editor puts the open workflow's id after a #)."""
    return (browser.current_url.split("#")[0].rstrip("/") == server.url.rstrip("/")
            and browser.execute_script("return !!(window.app && app.graph && app.canvas);"))


def load_workflow(browser: Any, workflow: dict) -> None:
    """Load an editor-format workflow the way dropping a file does, and check the editor shows its nodes."""
    run_js(browser, "await app.loadGraphData(args[0]);", workflow)
    wanted = sorted([node["id"], node["type"]] for node in workflow["nodes"])
    time.sleep(0.5)
    shown = run_js(browser, "return app.graph.serialize().nodes.map((n) => [n.id, n.type]);")
    assert sorted(shown) == wanted, f"the editor shows other nodes than the loaded workflow's: {sorted(shown)}"


def missing_node_types(browser: Any) -> list[str]:
    """Types of nodes in the loaded graph that the editor does not know (shown as red nodes)."""
    return run_js(browser, """
        const known = (type) => type in LiteGraph.registered_node_types || args[0].includes(type);
        return [...new Set(app.graph.serialize().nodes.map((n) => n.type).filter((t) => !known(t)))].sort();
    """, list(FRONTEND_ONLY_TYPES))


def graph_to_prompt(browser: Any) -> dict:
    """The API prompt the editor makes of the loaded graph (`app.graphToPrompt().output`)."""
    return run_js(browser, "return (await app.graphToPrompt()).output;")


def queue(browser: Any, prompt: dict) -> str:
    """Queue an API prompt through the frontend's API client; returns the prompt id."""
    response = run_js(browser, "return await app.api.queuePrompt(0, { output: args[0], workflow: app.graph.serialize() });",
                      prompt)
    return response["prompt_id"]


def click_run(browser: Any, server: ComfyServer, timeout: float = 60) -> str:
    """Queue the loaded graph as the Run button does (`app.queuePrompt`, which the newest frontends follow to show
    a run's errors); returns the new prompt's id."""
    def known() -> set[str]:
        queue = server.get("/queue")
        return set(server.get("/history")) | {item[1] for key in ("queue_running", "queue_pending")
                                               for item in queue[key]}
    before = known()
    run_js(browser, "await app.queuePrompt(0, 1);")
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = known() - before
        if new:
            return new.pop()
        time.sleep(0.25)
    raise AssertionError(f"the editor's Run queued nothing in {timeout}s:\n{console_log(browser)}")


def screenshot(browser: Any, name: str) -> str:
    """Save a PNG of the page into test-artifacts/ and return its path."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name if name.endswith(".png") else f"{name}.png")
    browser.save_screenshot(path)
    return path


def has_setting(browser: Any, setting_id: str) -> bool:
    """Whether this frontend defines a setting (a capability check instead of a version string)."""
    return browser.execute_script("return arguments[0] in (app.ui.settings.settingsLookup ?? {});", setting_id)


def set_setting(browser: Any, setting_id: str, value: Any) -> None:
    """Change an editor setting as the settings dialog does (saved in the server's user folder)."""
    run_js(browser, "await app.extensionManager.setting.set(args[0], args[1]);", setting_id, value)


def use_prompt_values(browser: Any, prompt: dict) -> None:
    """Reload the graph with an API prompt's widget values (tiny model names, small sizes): the editor's checks
    on load (missing models) then see what is run."""
    run_js(browser, """
        for (const [id, entry] of Object.entries(args[0])) {
            const node = app.graph.getNodeById(id) ?? app.graph.getNodeById(Number(id));
            for (const [name, value] of Object.entries(entry.inputs)) {
                const widget = Array.isArray(value) ? null : node?.widgets?.find((w) => w.name === name);
                if (widget) widget.value = value;
            }
        }
        await app.loadGraphData(app.graph.serialize());
    """, prompt)


_DETAILS_BUTTON = "[...document.querySelectorAll('button')].find((b) => b.innerText.trim() === 'View details')"


def read_execution_error(browser: Any, message: str, timeout: float = 60) -> str | None:
    """Wait until the editor shows an execution error containing `message` where a user reads it.

    The old frontend shows it in a dialog. The new one (it has the errors tab setting) shows an overlay
    ("<node title> failed ... View details"): this clicks View details and finds the message in the errors panel.
    Returns the overlay's text (None on the old frontend).
    """
    shown = f"document.body.innerText.includes({json.dumps(message)})"
    if not has_setting(browser, "Comfy.RightSidePanel.ShowErrorsTab"):
        wait_js(browser, shown, timeout=timeout, what=f"the error dialog with {message!r}")
        return None
    wait_js(browser, _DETAILS_BUTTON, timeout=timeout, what="the errors overlay's View details button")
    overlay = browser.execute_script(f"let box = {_DETAILS_BUTTON};"
                                     "while (box.parentElement && !/error/i.test(box.innerText)) box = box.parentElement;"
                                     "return box.innerText;")
    assert not browser.execute_script(f"return {shown};"), "the message showed before View details was clicked"
    browser.execute_script(f"{_DETAILS_BUTTON}.click();")
    wait_js(browser, shown, timeout=30, what=f"the errors panel with {message!r}")
    return overlay
