"""What guidance did, made visible: scores of readouts against their targets, word attention maps, drawn marks."""
