"""Readout heads: architecture, head files (official .pt, our .safetensors), conversion, decoder features, readouts and extraction."""
