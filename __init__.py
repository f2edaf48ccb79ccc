"""Readout Guidance for ComfyUI: registers the `readout_heads` and `readout_datasets` model folders, the example
workflows' input images and the nodes (ComfyUI's V3 schema)."""
from .readout.example_inputs import copy_example_inputs
from .readout.heads.model_folder import register_model_folders

register_model_folders()
copy_example_inputs()

from .nodes import ReadoutGuidanceExtension  # noqa: E402

WEB_DIRECTORY = "./web"
__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]


async def comfy_entrypoint() -> ReadoutGuidanceExtension:
    return ReadoutGuidanceExtension()
