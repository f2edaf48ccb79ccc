"""A training run's progress in ComfyUI: the node's progress bar, the running loss as the node's text, and
ComfyUI's Cancel (checked after every step)."""
from __future__ import annotations

import time

TEXT_INTERVAL_S = 1.0
"""The running loss is sent to the node at most once a second."""


class GraphProgress:
    """The `on_step` callback of a training run inside a ComfyUI prompt."""

    def __init__(self, steps: int) -> None:
        import comfy.utils

        self.bar = comfy.utils.ProgressBar(steps)
        self.last_text = 0.0

    def __call__(self, step: int, steps: int, loss: float) -> None:
        import comfy.model_management

        self.bar.update_absolute(step, steps)
        now = time.monotonic()
        if now - self.last_text >= TEXT_INTERVAL_S or step >= steps:
            self.last_text = now
            show_text(f"step {step}/{steps}, loss {loss:.4g}")
        comfy.model_management.throw_exception_if_processing_interrupted()


def show_text(text: str) -> None:
    """Text on the running node, where the server can show it."""
    import server
    from comfy_execution.utils import get_executing_context

    instance = getattr(server.PromptServer, "instance", None)
    context = get_executing_context()
    if context is not None and hasattr(instance, "send_progress_text"):
        instance.send_progress_text(text, context.node_id)
