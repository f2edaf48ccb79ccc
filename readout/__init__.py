"""Readout Guidance library: heads, features, targets, guidance rule and ComfyUI glue."""
