"""The `readout_heads` and `readout_datasets` model folders, registered with ComfyUI's folder_paths."""
from __future__ import annotations

import os

import folder_paths

from .files import TRAINING_STATE_SUFFIX

FOLDER_NAME = "readout_heads"
HEAD_EXTENSIONS = {".safetensors", ".pt", ".pth"}
DATASETS_FOLDER_NAME = "readout_datasets"
"""Training datasets built in the graph: one subfolder each (models/readout_datasets/<name>)."""


def register_model_folders() -> None:
    """Add `models/readout_heads` and `models/readout_datasets` as default paths, keeping paths from
    extra_model_paths.yaml."""
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    folder_paths.add_model_folder_path(FOLDER_NAME, default, is_default=True)
    paths, extensions = folder_paths.folder_names_and_paths[FOLDER_NAME]
    folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(extensions) | HEAD_EXTENSIONS)
    datasets = os.path.join(folder_paths.models_dir, DATASETS_FOLDER_NAME)
    folder_paths.add_model_folder_path(DATASETS_FOLDER_NAME, datasets, is_default=True)


def datasets_root() -> str:
    """The folder the dataset nodes write into (the first `readout_datasets` path)."""
    return folder_paths.get_folder_paths(DATASETS_FOLDER_NAME)[0]


def head_output_path(head_name: str) -> str:
    """Where a head trained in the graph is written: `<first readout_heads path>/<head_name>.safetensors`."""
    return os.path.join(folder_paths.get_folder_paths(FOLDER_NAME)[0], f"{head_name}.safetensors")


def head_file_names() -> list[str]:
    """The head files in the folder, without the trainer's `<head>.state.pt` resume files (not heads)."""
    return [n for n in folder_paths.get_filename_list(FOLDER_NAME) if not n.endswith(TRAINING_STATE_SUFFIX)]
