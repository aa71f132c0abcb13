"""The inversion encoders (images -> W+): the IR-SE backbone, pSp / e4e, Style Transformer (and its
EditTransformer), StylePrompter with SMART, SwinStyleformer, their shared assembly (latent_encoder) and the
training losses."""
