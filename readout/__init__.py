"""Readout Guidance library in four parts: heads/, guidance/, targets/, train/."""
