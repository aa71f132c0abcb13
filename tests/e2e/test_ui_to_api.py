"""The harness's UI-format -> API-format conversion (no server: a hand-written /object_info)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for comfy_harness
import comfy_harness as h  # noqa: E402

OBJECT_INFO = {
    "Src": {"input": {"required": {}}, "output": ["MODEL"], "display_name": "Source"},
    "Pass": {"input": {"required": {"model": ["MODEL"]}}, "output": ["MODEL"]},
    "Sampler": {"input": {
        "required": {"model": ["MODEL"], "seed": ["INT", {"default": 0}], "steps": ["INT", {"default": 20}],
                     "sampler": [["a", "b"]], "cfg": ["FLOAT", {"default": 8.0}]},
        "optional": {"text": ["STRING", {"multiline": True}], "flag": ["BOOLEAN", {"default": False}],
                     "forced": ["INT", {"forceInput": True}]}},
        "output": ["LATENT"], "display_name": "Sampler"},
    "LoadImage": {"input": {"required": {"image": [["x.png", "y.png"], {"image_upload": True}]}},
                  "output": ["IMAGE", "MASK"]},
    "ComboCtl": {"input": {"required": {"choice": [["p", "q"], {"control_after_generate": True}],
                                        "n": ["INT", {"default": 1}]}}, "output": ["X"]},
}


def node(id_, type_, widgets=None, inputs=None, outputs=None, mode=0, **extra):
    n = {"id": id_, "type": type_, "pos": [0, 0], "size": {"0": 100, "1": 50}, "flags": {}, "order": id_,
         "mode": mode, "properties": {}, "inputs": inputs or [], "outputs": outputs or []}
    if widgets is not None:
        n["widgets_values"] = widgets
    n.update(extra)
    return n


def wf(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max([l[0] for l in links] or [0]),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def test_widgets_links_and_seed_control_value():
    g = wf([node(1, "Src", outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}]),
            node(2, "Sampler", [7, "randomize", 20, "b", 7.5, "hi", True],
                 inputs=[{"name": "model", "type": "MODEL", "link": 1}]),
            node(3, "Note", ["just text"])],
           [[1, 1, 0, 2, 0, "MODEL"]])
    api = h.ui_to_api(g, OBJECT_INFO)
    assert set(api) == {"1", "2"}
    assert api["2"]["class_type"] == "Sampler"
    assert api["2"]["inputs"] == {"model": ["1", 0], "seed": 7, "steps": 20, "sampler": "b", "cfg": 7.5,
                                  "text": "hi", "flag": True}
    assert api["1"]["_meta"]["title"] == "Source"


def test_seed_without_control_value_is_not_skipped():
    g = wf([node(1, "Src", outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}]),
            node(2, "Sampler", [7, 20, "a", 1.5, "", False], inputs=[{"name": "model", "type": "MODEL", "link": 1}])],
           [[1, 1, 0, 2, 0, "MODEL"]])
    assert h.ui_to_api(g, OBJECT_INFO)["2"]["inputs"]["steps"] == 20


def test_reroute_bypass_primitive_and_muted():
    g = wf([node(1, "Src", outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}]),
            node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
                 outputs=[{"name": "", "type": "MODEL", "links": [2]}]),
            node(3, "Pass", inputs=[{"name": "model", "type": "MODEL", "link": 2}],
                 outputs=[{"name": "MODEL", "type": "MODEL", "links": [3]}], mode=h.MODE_BYPASS),
            node(4, "PrimitiveNode", [99, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [4],
                                                               "widget": {"name": "seed"}}]),
            node(5, "Sampler", [0, "randomize", 5, "a", 2.0, "", False],
                 inputs=[{"name": "model", "type": "MODEL", "link": 3},
                         {"name": "seed", "type": "INT", "link": 4, "widget": {"name": "seed"}}]),
            node(6, "Sampler", [1, "fixed", 5, "a", 2.0, "", False], mode=h.MODE_NEVER)],
           [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 5, 0, "MODEL"], [4, 4, 0, 5, 1, "INT"]])
    api = h.ui_to_api(g, OBJECT_INFO)
    assert set(api) == {"1", "5"}
    assert api["5"]["inputs"]["model"] == ["1", 0]
    assert api["5"]["inputs"]["seed"] == 99
    assert api["5"]["inputs"]["steps"] == 5


def test_upload_and_combo_control_widgets():
    g = wf([node(1, "LoadImage", ["y.png", "image"]), node(2, "ComboCtl", ["q", "fixed", "", 3])], [])
    api = h.ui_to_api(g, OBJECT_INFO)
    assert api["1"]["inputs"] == {"image": "y.png"}
    assert api["2"]["inputs"] == {"choice": "q", "n": 3}


def test_dict_widgets_values():
    g = wf([node(1, "ComboCtl", {"choice": "p", "n": 4})], [])
    assert h.ui_to_api(g, OBJECT_INFO)["1"]["inputs"] == {"choice": "p", "n": 4}


def test_unknown_node_type_is_named():
    with pytest.raises(ValueError, match="NotInstalled"):
        h.ui_to_api(wf([node(1, "NotInstalled", [])], []), OBJECT_INFO)


def test_workflow_model_files():
    wf_path = h.WORKFLOWS_DIR / "stylegan_generate.json"
    assert ("stylegan", "stylegan2-ffhq-config-f.pt") in h.workflow_model_files(h.load_workflow(wf_path))
    inv = h.load_workflow(h.WORKFLOWS_DIR / "invert_reconstruct.json")
    assert h.workflow_model_files(inv) == [("gan_encoders", "style_transformer_ffhq.pt")]


def test_workflow_input_files():
    g = wf([node(1, "LoadImage", ["a.png", "image"]), node(2, "LoadImage", {"image": "b.png [input]"}),
            node(3, "LoadImage", ["a.png", "image"]), node(4, "LoadImage", ["muted.png", "image"], mode=h.MODE_NEVER)],
           [])
    assert h.workflow_input_files(g) == ["a.png", "b.png"]
    inv = h.load_workflow(h.WORKFLOWS_DIR / "invert_reconstruct.json")
    assert h.workflow_input_files(inv) == ["transedit_example_face.png"]


def test_prepare_inputs_finds_or_writes_the_example_face(tmp_path):
    from PIL import Image

    found_dir = tmp_path / "mine"
    found_dir.mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(found_dir / "a.png")
    g = wf([node(1, "LoadImage", ["a.png", "image"]), node(2, "LoadImage", ["face.png", "image"])], [])
    inputs, stand_ins = h.prepare_inputs([g], [tmp_path / "absent", found_dir], tmp_path / "made")
    assert inputs["a.png"] == found_dir / "a.png" and stand_ins == ["face.png"]
    with Image.open(inputs["face.png"]) as im:
        assert im.format == "PNG" and im.size == (512, 512) and im.mode == "RGB"
