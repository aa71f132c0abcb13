"""TransEdit: transformer image editing for ComfyUI.

ComfyUI loads this folder by path (whatever it was cloned as), so everything inside uses relative
imports; `pip install -e .` installs the same folder as the package `transedit`.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes.comfy_bridge import register_model_folders

__version__ = "0.1.0"

register_model_folders()

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
