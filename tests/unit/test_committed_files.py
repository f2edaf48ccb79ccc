"""What the repository may hold: the trained weights of our own small models in world/weights/ (24 MB in all, each
reproduced by a script in world/), and nothing else over 1 MB."""
from __future__ import annotations

import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WEIGHTS_FOLDER = "world/weights/"
WEIGHTS_BUDGET = 24 * 10**6
OTHER_FILE_LIMIT = 10**6


def tracked_files() -> dict[str, int]:
    """Every file git tracks (or is about to: added to the index), with its size."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (the registry package holds no weights)")
    paths = [p for p in names.decode().split("\0") if p and os.path.isfile(os.path.join(REPO, p))]
    return {p: os.path.getsize(os.path.join(REPO, p)) for p in paths}


def test_committed_weights_fit_their_budget_and_nothing_else_is_large():
    files = tracked_files()
    weights = {p: size for p, size in files.items() if p.startswith(WEIGHTS_FOLDER)}
    assert weights and sum(weights.values()) <= WEIGHTS_BUDGET, sorted(weights.items())
    large = {p: size for p, size in files.items() if size > OTHER_FILE_LIMIT and p not in weights}
    assert large == {}, f"files over 1 MB outside {WEIGHTS_FOLDER}: {large}"
