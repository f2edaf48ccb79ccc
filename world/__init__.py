"""The scene world: procedural scenes with exact ground truth and a small model trained on them (not product code)."""
