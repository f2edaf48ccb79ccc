"""A real ComfyUI server process on loopback: start, queue prompts, wait, stop."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from testbed import model_paths_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ComfyServer:
    """A ComfyUI server process on loopback."""

    url: str
    output_dir: str
    process: subprocess.Popen
    log_path: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> Any:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                body = r.read()
                return json.loads(body) if body else None
        except urllib.error.HTTPError as err:
            raise PromptFailed(f"POST {path} -> {err.code}: {err.read().decode()[:4000]}") from err

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue a prompt and wait for its history entry; raise PromptFailed with the server's error text."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": "readout-guidance"})["prompt_id"]
        return self.wait(prompt_id, timeout)

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The history entry of a queued prompt once it succeeded; PromptFailed with the server's error otherwise."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status", {})
            if status.get("status_str") == "success" and status.get("completed"):
                return entry
            if status.get("status_str") == "error":
                raise PromptFailed(execution_error_text(status))
            if self.process.poll() is not None:
                raise PromptFailed(f"server died:\n{self.log_tail()}")
            time.sleep(0.25)
        raise PromptFailed(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()[-chars:]


class PromptFailed(RuntimeError):
    """A queued prompt ended with an error; the message is the server's own text."""


def execution_error_text(status: dict) -> str:
    """The node type and exception message of an execution_error in a history status."""
    for event, data in status.get("messages", []):
        if event == "execution_error":
            return f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_type')}: {data.get('exception_message')}"
    return json.dumps(status)[:4000]


def start_server(comfy: str, output_dir: str, log_path: str, port: int | None = None,
                 user_dir: str | None = None, temp_dir: str | None = None,
                 launch_args: tuple[str, ...] = ("--cpu",)) -> ComfyServer:
    """Start `main.py` with `launch_args` (default `--cpu`) on a free loopback port and wait until it answers
    /object_info.

    `user_dir` (ComfyUI's --user-directory) holds the editor's saved settings: a fresh one gives the defaults.
    A `temp_dir` of its own keeps its previews from being wiped when another server on the same ComfyUI starts.
    COMFYUI_FRONTEND_ROOT (a frontend package's `static` folder) serves that frontend instead of the installed one.
    The test bed's shared models come from its model paths file (testbed.write_model_paths).
    """
    port = port or free_port()
    log = open(log_path, "w")
    user_args = ["--user-directory", user_dir] if user_dir else []
    temp_args = ["--temp-directory", temp_dir] if temp_dir else []
    frontend = os.environ.get("COMFYUI_FRONTEND_ROOT")
    frontend_args = ["--front-end-root", frontend] if frontend else []
    paths_file = model_paths_file(comfy)
    paths_args = ["--extra-model-paths-config", paths_file] if os.path.isfile(paths_file) else []
    proc = subprocess.Popen(
        [sys.executable, "main.py", *launch_args, "--listen", "127.0.0.1", "--port", str(port),
         "--output-directory", output_dir, "--disable-auto-launch", *user_args, *temp_args,
         *frontend_args, *paths_args],
        cwd=comfy, stdout=log, stderr=subprocess.STDOUT,
    )
    server = ComfyServer(f"http://127.0.0.1:{port}", output_dir, proc, log_path)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited at start-up:\n{open(log_path).read()[-4000:]}")
        try:
            server.get("/object_info/CheckpointLoaderSimple")
            return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    stop_server(server)
    raise RuntimeError(f"ComfyUI did not answer within 180 s:\n{open(log_path).read()[-4000:]}")


def stop_server(server: ComfyServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
