"""PUT inpainting: the transformer and its loader, the P-VQVAE codec, and token sampling."""
