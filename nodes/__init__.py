"""ComfyUI glue: one module per stage plus `comfy_bridge`, the only module that imports ComfyUI."""
from . import editing, faces, inversion, put, splice, stylegan

_STAGES = (stylegan, faces, inversion, editing, splice, put)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _stage in _STAGES:
    NODE_CLASS_MAPPINGS.update(_stage.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_stage.NODE_DISPLAY_NAME_MAPPINGS)
