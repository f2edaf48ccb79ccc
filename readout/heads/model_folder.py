"""The `readout_heads` model folder, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

from .files import TRAINING_STATE_SUFFIX

FOLDER_NAME = "readout_heads"
HEAD_EXTENSIONS = {".safetensors", ".pt", ".pth"}


def register_readout_heads_folder() -> None:
    """Add `models/readout_heads` as the default path, keeping paths from extra_model_paths.yaml."""
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    folder_paths.add_model_folder_path(FOLDER_NAME, default, is_default=True)
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER_NAME]
    folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(extensions) | HEAD_EXTENSIONS)


def head_file_names() -> list[str]:
    """The head files in the folder, without the trainer's `<head>.state.pt` resume files (not heads)."""
    return [n for n in folder_paths.get_filename_list(FOLDER_NAME) if not n.endswith(TRAINING_STATE_SUFFIX)]
