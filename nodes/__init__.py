"""The pack's V3 nodes, gathered into the extension ComfyUI loads through `comfy_entrypoint`."""
from __future__ import annotations

from . import guidance, heads, relative, report, self_guidance, training
from .common import ComfyExtension, io

NODES: list[type[io.ComfyNode]] = [*heads.NODES, *guidance.NODES, *relative.NODES, *self_guidance.NODES,
                                   *report.NODES, *training.NODES]


class ReadoutGuidanceExtension(ComfyExtension):
    """Readout Guidance's nodes, for ComfyUI's V3 extension loader."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
