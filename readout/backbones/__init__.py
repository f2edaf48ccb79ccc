"""Model families: everything that depends on how a model computes (layers, embeddings, attention, noising)."""
