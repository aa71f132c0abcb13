"""ComfyUI glue: one module per stage plus `comfy_bridge`, the only module that imports ComfyUI, and
`http_routes`, the endpoints the frontend extension calls."""
from . import (comfy_bridge, compare, edit_studio, editing, faces, http_routes, inversion, put, splice, stylegan,
               tuning)

_STAGES = (stylegan, faces, inversion, editing, edit_studio, splice, put, tuning, compare)

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _stage in _STAGES:
    NODE_CLASS_MAPPINGS.update(_stage.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_stage.NODE_DISPLAY_NAME_MAPPINGS)

# data for the frontend extension (js/transedit.js): Load Direction's descriptions
http_routes.register_json_route("/transedit/directions", editing.direction_catalog)
# Edit Studio's live previews: slider values in, a low-resolution render of the node's last run out; submitted
# prompts wait (off the event loop) until the preview in flight has let go of the models
http_routes.register_preview_route(edit_studio.ROUTE, edit_studio.SERVICE)
