"""What a readout should become: spatial, relative (drag, appearance, identity) and self-guidance targets, points, prompt tokens, references and inversion."""
