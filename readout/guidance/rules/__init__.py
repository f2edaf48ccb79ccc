"""Guidance rules: what each does with one guided UNet call's readings (base.py: the interface; fast.py: the pack's
rule; official.py: the official code's step)."""
