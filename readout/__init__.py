"""Readout Guidance library in four parts: heads/, guidance/, targets/, train/; errors.py: the base of its errors."""
