"""Splice: the DINO ViT and Splice's per-pair generator, losses and training loop."""
