"""Guided sampling inside ComfyUI: the patch on a guided MODEL (patch.py: wrappers and the guided UNet call), the
rules (rules/), a run's state (run.py), the grad pass, batch split, memory, compute dtype, the loss plot."""
