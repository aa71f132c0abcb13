"""The model library, pure PyTorch and no ComfyUI: one package per family (stylegan, encoders, face, splice, put),
the core they all share (core), and the registry above them that turns a weights file into a model."""
