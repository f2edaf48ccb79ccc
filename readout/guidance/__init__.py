"""Guided sampling inside ComfyUI: the guided UNet call (wrappers, grad pass, batch split, attention capture), the normalized-gradient rule, the loss plot."""
