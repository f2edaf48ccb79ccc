"""Deterministic tiny SD1-family models for tests and the demo; not part of the pack at run time."""
