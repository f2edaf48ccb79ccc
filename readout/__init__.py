"""Readout Guidance library in four parts: heads/, guidance/, targets/, train/; errors.py holds the base of its errors."""
