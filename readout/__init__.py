"""Readout Guidance library in six parts: backbones/ (what each model family exposes), heads/, targets/, guidance/,
train/, report/; errors.py: the base of its errors."""
