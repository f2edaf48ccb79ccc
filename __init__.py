"""Readout Guidance for ComfyUI: registers the nodes and the `readout_heads` model folder."""
from .readout.heads.model_folder import register_readout_heads_folder

register_readout_heads_folder()

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

WEB_DIRECTORY = "./web/js"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
