"""The base of the pack's own errors: ComfyUI reports them as `readout_guidance.<Name>`, not by the import path of
the pack's folder (ComfyUI names a custom node's modules after the folder's full path)."""
from __future__ import annotations

PUBLIC_MODULE = "readout_guidance"


class ReadoutError(ValueError):
    """A bad input to the pack; the message names the input and the fix."""

    __module__ = PUBLIC_MODULE

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.__module__ = PUBLIC_MODULE
