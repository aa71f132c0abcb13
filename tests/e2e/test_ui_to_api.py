"""The harness's UI-format -> API-format conversion (no server: a hand-written /object_info)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for comfy_harness
import comfy_harness as h  # noqa: E402
import workflow_graph as wg  # noqa: E402

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
    api = wg.ui_to_api(g, OBJECT_INFO)
    assert set(api) == {"1", "2"}
    assert api["2"]["class_type"] == "Sampler"
    assert api["2"]["inputs"] == {"model": ["1", 0], "seed": 7, "steps": 20, "sampler": "b", "cfg": 7.5,
                                  "text": "hi", "flag": True}
    assert api["1"]["_meta"]["title"] == "Source"


def test_seed_without_control_value_is_not_skipped():
    g = wf([node(1, "Src", outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}]),
            node(2, "Sampler", [7, 20, "a", 1.5, "", False], inputs=[{"name": "model", "type": "MODEL", "link": 1}])],
           [[1, 1, 0, 2, 0, "MODEL"]])
    assert wg.ui_to_api(g, OBJECT_INFO)["2"]["inputs"]["steps"] == 20


def test_reroute_bypass_primitive_and_muted():
    g = wf([node(1, "Src", outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}]),
            node(2, "Reroute", inputs=[{"name": "", "type": "*", "link": 1}],
                 outputs=[{"name": "", "type": "MODEL", "links": [2]}]),
            node(3, "Pass", inputs=[{"name": "model", "type": "MODEL", "link": 2}],
                 outputs=[{"name": "MODEL", "type": "MODEL", "links": [3]}], mode=wg.MODE_BYPASS),
            node(4, "PrimitiveNode", [99, "fixed"], outputs=[{"name": "INT", "type": "INT", "links": [4],
                                                               "widget": {"name": "seed"}}]),
            node(5, "Sampler", [0, "randomize", 5, "a", 2.0, "", False],
                 inputs=[{"name": "model", "type": "MODEL", "link": 3},
                         {"name": "seed", "type": "INT", "link": 4, "widget": {"name": "seed"}}]),
            node(6, "Sampler", [1, "fixed", 5, "a", 2.0, "", False], mode=wg.MODE_NEVER)],
           [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 3, 0, "MODEL"], [3, 3, 0, 5, 0, "MODEL"], [4, 4, 0, 5, 1, "INT"]])
    api = wg.ui_to_api(g, OBJECT_INFO)
    assert set(api) == {"1", "5"}
    assert api["5"]["inputs"]["model"] == ["1", 0]
    assert api["5"]["inputs"]["seed"] == 99
    assert api["5"]["inputs"]["steps"] == 5


def test_upload_and_combo_control_widgets():
    g = wf([node(1, "LoadImage", ["y.png", "image"]), node(2, "ComboCtl", ["q", "fixed", "", 3])], [])
    api = wg.ui_to_api(g, OBJECT_INFO)
    assert api["1"]["inputs"] == {"image": "y.png"}
    assert api["2"]["inputs"] == {"choice": "q", "n": 3}


def test_dict_widgets_values():
    g = wf([node(1, "ComboCtl", {"choice": "p", "n": 4})], [])
    assert wg.ui_to_api(g, OBJECT_INFO)["1"]["inputs"] == {"choice": "p", "n": 4}


def test_unknown_node_type_is_named():
    with pytest.raises(ValueError, match="NotInstalled"):
        wg.ui_to_api(wf([node(1, "NotInstalled", [])], []), OBJECT_INFO)


def test_workflow_model_files():
    wf_path = wg.WORKFLOWS_DIR / "stylegan_generate.json"
    assert ("stylegan", "stylegan2-ffhq-config-f.pt") in h.workflow_model_files(wg.load_workflow(wf_path))
    inv = wg.load_workflow(wg.WORKFLOWS_DIR / "invert_reconstruct.json")
    assert h.workflow_model_files(inv) == [("facedetection", "detection_Resnet50_Final.pth"),
                                           ("gan_encoders", "style_transformer_ffhq.pt")]


def test_workflow_input_files():
    g = wf([node(1, "LoadImage", ["a.png", "image"]), node(2, "LoadImage", {"image": "b.png [input]"}),
            node(3, "LoadImage", ["a.png", "image"]), node(4, "LoadImage", ["muted.png", "image"], mode=wg.MODE_NEVER)],
           [])
    assert h.workflow_input_files(g) == ["a.png", "b.png"]
    inv = wg.load_workflow(wg.WORKFLOWS_DIR / "invert_reconstruct.json")
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


def test_workflow_model_files_directions_and_checkpoints():
    edit = wg.load_workflow(wg.WORKFLOWS_DIR / "invert_edit.json")
    assert h.workflow_model_files(edit) == [("facedetection", "detection_Resnet50_Final.pth"),
                                            ("gan_encoders", "style_transformer_ffhq.pt"),
                                            ("latent_directions", "age.pt"), ("latent_directions", "smile.pt")]
    assert h.workflow_model_files(edit, h.USER_MODEL_INPUTS) == []
    diff = wg.load_workflow(wg.WORKFLOWS_DIR / "edit_to_diffusion.json")
    assert h.workflow_model_files(diff, h.USER_MODEL_INPUTS) == [("checkpoints", "v1-5-pruned-emaonly.safetensors")]
    presets = wf([node(1, "TransEditLoadDirection", ["preset: ganspace ffhq smile", 0]),
                  node(2, "TransEditLoadDirection", ["sefa: from the generator input (all layers)", 3]),
                  node(3, "TransEditLoadDirection", ["sub/pose.pt", 0])], [])
    assert h.workflow_model_files(presets) == [("latent_directions", "sub/pose.pt")]


def test_tiny_directions_differ_per_name(tmp_path):
    import torch

    g = wf([node(1, "TransEditLoadDirection", ["age.pt", 0]), node(2, "TransEditLoadDirection", ["smile.pt", 0])],
           [])
    models, tiny = h.prepare_models([g], [], tmp_path)
    assert tiny == [("latent_directions", "age.pt"), ("latent_directions", "smile.pt")]
    age, smile = (torch.load(models["latent_directions"][n], weights_only=True) for n in ("age.pt", "smile.pt"))
    assert age.shape == smile.shape == (1, h.TINY_STYLE_DIM) and not torch.equal(age, smile)


def test_find_user_models(tmp_path):
    diff = wg.load_workflow(wg.WORKFLOWS_DIR / "edit_to_diffusion.json")
    found, missing = h.find_user_models([diff], [tmp_path])
    assert found == {} and missing == [("checkpoints", "v1-5-pruned-emaonly.safetensors")]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "v1-5-pruned-emaonly.safetensors").write_bytes(b"x")
    found, missing = h.find_user_models([diff], [tmp_path])
    assert missing == [] and found["checkpoints"]["v1-5-pruned-emaonly.safetensors"].is_file()


TYPED_INFO = {
    "Loader": {"input": {"required": {"ckpt_name": [["a.ckpt"]]}}, "output": ["MODEL", "VAE"],
               "output_node": False},
    "Img": {"input": {"required": {}}, "output": ["IMAGE"], "output_node": False},
    "Enc": {"input": {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}}, "output": ["LATENT"]},
    "Any": {"input": {"required": {"x": ["*"]}}, "output": []},
    "Save": {"input": {"required": {"latent": ["LATENT"]}}, "output": [], "output_node": True},
    "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.ckpt"]]}}, "output": ["MODEL"]},
}


def _typed_graph(link_from_slot=1, link_type="VAE"):
    return wf([node(1, "Loader", ["a.ckpt"], outputs=[{"name": "MODEL", "type": "MODEL", "links": None},
                                                      {"name": "VAE", "type": "VAE", "links": [2]}]),
               node(2, "Img", outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1, 4]}]),
               node(3, "Enc", inputs=[{"name": "pixels", "type": "IMAGE", "link": 1},
                                      {"name": "vae", "type": "VAE", "link": 2}],
                    outputs=[{"name": "LATENT", "type": "LATENT", "links": [3]}]),
               node(4, "Save", inputs=[{"name": "latent", "type": "LATENT", "link": 3}]),
               node(5, "Any", inputs=[{"name": "x", "type": "*", "link": 4}]),
               node(6, "Note", ["text"])],
              [[1, 2, 0, 3, 0, "IMAGE"], [2, 1, link_from_slot, 3, 1, link_type], [3, 3, 0, 4, 0, "LATENT"],
               [4, 2, 0, 5, 0, "IMAGE"]])


def test_check_workflow_types():
    assert wg.check_workflow_types(_typed_graph(), TYPED_INFO) == []
    problems = wg.check_workflow_types(_typed_graph(link_from_slot=0, link_type="MODEL"), TYPED_INFO)
    assert len(problems) == 1 and "MODEL does not fit input type VAE" in problems[0], problems
    problems = wg.check_workflow_types(_typed_graph(link_from_slot=5), TYPED_INFO)
    assert problems and "no output slot 5" in problems[0], problems
    g = _typed_graph()
    g["nodes"][2]["inputs"][1]["name"] = "vae_renamed"
    assert any("has no input 'vae_renamed'" in p for p in wg.check_workflow_types(g, TYPED_INFO))
    g = _typed_graph()
    g["nodes"][0]["type"] = "GoneNode"
    assert any("'GoneNode' is not in /object_info" in p for p in wg.check_workflow_types(g, TYPED_INFO))
    g = _typed_graph()
    g["nodes"][0]["outputs"][1]["type"] = "CLIP"  # saved slot type disagrees with the server
    assert any("output 1 is saved as CLIP" in p for p in wg.check_workflow_types(g, TYPED_INFO))


def test_drop_nodes_and_unavailable_user_models():
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "mine.safetensors"}},
              "2": {"class_type": "Img", "inputs": {}},
              "3": {"class_type": "Enc", "inputs": {"pixels": ["2", 0], "vae": ["1", 0]}},
              "4": {"class_type": "Save", "inputs": {"latent": ["3", 0]}},
              "5": {"class_type": "Any", "inputs": {"x": ["2", 0]}}}
    assert h.unavailable_user_models(prompt, TYPED_INFO) == {"1": "mine.safetensors"}
    kept, dropped = h.without_unavailable_user_models(prompt, TYPED_INFO)
    assert dropped == ["1", "3", "4"] and set(kept) == {"2", "5"}
    prompt["1"]["inputs"]["ckpt_name"] = "a.ckpt"
    assert h.without_unavailable_user_models(prompt, TYPED_INFO) == (prompt, [])
    assert wg.output_node_ids(prompt, TYPED_INFO) == ["4"]


def _codec_combo(optional=False):
    encoding = ["COMFY_DYNAMICCOMBO_V3", {"options": [
        {"key": "auto", "inputs": {"required": {}}},
        {"key": "re-encode", "inputs": {"required": {"crf": ["FLOAT", {"default": 23.0}],
                                                     "color_space": ["COMBO", {"options": ["auto", "sRGB"]}]}}}]}]
    return ["COMFY_DYNAMICCOMBO_V3", {"options": [{"key": "auto", "inputs": {"required": {}}},
                                                  {"key": "h264", "inputs": {"required": {},
                                                                             "optional": {"encoding": encoding}}}]}]


# 0.33's Save Video (a V3 node): format -> codec -> encoding, each choice adding inputs; Load Video's upload
VIDEO_INFO = {
    "SaveVideo": {"input": {
        "required": {"video": ["VIDEO"], "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                     "format": ["COMFY_DYNAMICCOMBO_V3", {"options": [
                         {"key": "auto", "inputs": {"required": {"codec": _codec_combo()}}},
                         {"key": "mp4", "inputs": {"required": {"codec": _codec_combo()}}}]}]},
        "optional": {"codec": _codec_combo()}}, "output": ["VIDEO"], "output_node": True},
    "LoadVideo": {"input": {"required": {"file": ["COMBO", {"options": ["clip.mp4"], "video_upload": True}]}},
                  "output": ["VIDEO"]},
}


def test_dynamic_combos_and_video_upload_as_the_frontend_sends_them():
    """What frontends 1.49.6 and 1.58.1 save for these nodes and send for them (seen in a browser, see the
    face-video workflow), read back the same way."""
    video = [{"name": "video", "type": "VIDEO", "link": 1}]
    g = wf([node(1, "LoadVideo", ["clip.mp4", "image"], outputs=[{"name": "VIDEO", "type": "VIDEO", "links": [1]}]),
            node(2, "SaveVideo", ["video/ComfyUI", "mp4", "h264", "re-encode", 18.0, "sRGB", "auto"], inputs=video),
            node(3, "SaveVideo", ["out/x", "auto", "auto", "auto"], inputs=[dict(video[0], link=None)])],
           [[1, 1, 0, 2, 0, "VIDEO"]])
    api = wg.ui_to_api(g, VIDEO_INFO)
    assert api["1"]["inputs"] == {"file": "clip.mp4"}
    assert api["2"]["inputs"] == {"video": ["1", 0], "filename_prefix": "video/ComfyUI", "format": "mp4",
                                  "format.codec": "h264", "format.codec.encoding": "re-encode",
                                  "format.codec.encoding.crf": 18.0, "format.codec.encoding.color_space": "sRGB",
                                  "codec": "auto"}
    assert api["3"]["inputs"] == {"filename_prefix": "out/x", "format": "auto", "format.codec": "auto",
                                  "codec": "auto"}
