"""Readout head trainer: `python -m readout.train` trains a head on a frozen SD1.5/SDXL UNet's decoder features.

Modules: `data` (datasets and their checks), `frozen_unet` (feature extraction), `losses`, `loop` (training,
validation, checkpoints), `__main__` (command line). See docs/training.md.
"""
