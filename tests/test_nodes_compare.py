"""Compare node and the before/after pairs the frontend's compare widget shows; Load Direction's catalog."""
import numpy as np
import pytest
import torch
from PIL import Image

from transedit.models.core.directions import LatentDirection, save_direction
from transedit.nodes import comfy_bridge as bridge
from transedit.nodes import compare as nodes
from transedit.nodes import editing
from transedit.nodes.inputs import NodeInputError


def test_pair_indices():
    assert nodes.pair_indices(3, 3) == [0, 1, 2]
    assert nodes.pair_indices(1, 4) == [0, 0, 0, 0]
    assert nodes.pair_indices(2, 6) == [0, 0, 0, 1, 1, 1]  # image-major groups (PUT samples, sweeps)
    assert nodes.pair_indices(3, 4) is None and nodes.pair_indices(0, 2) is None


def test_compare_node_writes_previews_and_pairs(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    before = torch.rand(2, 24, 32, 3)
    after = torch.rand(6, 48, 64, 4)  # RGBA results, 3 per input
    out = nodes.TransEditCompare().compare(before, after)
    assert out["result"] == ()
    payload = out["ui"][nodes.UI_KEY][0]
    assert payload["total"] == 6 and len(payload["pairs"]) == nodes.MAX_PAIRS
    first, last = payload["pairs"][0], payload["pairs"][-1]
    assert first["before"] == payload["pairs"][2]["before"] and last["before"] != first["before"]
    folder = tmp_path / "transedit_previews" / "transedit"
    with Image.open(folder / last["after"]["filename"]) as im:
        assert im.size == (64, 48) and im.mode == "RGB"
    with Image.open(folder / first["before"]["filename"]) as im:
        pixels = torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)) / 255
    torch.testing.assert_close(pixels, before[0], atol=1 / 255, rtol=0)
    assert not list(folder.glob("*.part"))  # written atomically
    assert all(p["after"]["type"] == "temp" for p in payload["pairs"])


def test_compare_node_refuses_unpairable_batches():
    with pytest.raises(NodeInputError, match="Compare.*after.*4 images for 3"):
        nodes.TransEditCompare().compare(torch.rand(3, 8, 8, 3), torch.rand(4, 8, 8, 3))


def test_stage_nodes_return_plain_tuples_outside_comfyui():
    assert not bridge.IN_COMFYUI
    assert bridge.with_ui((1, 2), {"x": 1}) == (1, 2)
    assert nodes.compare_ui(torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3)) is None


def test_direction_catalog_describes_presets_and_files(tmp_path):
    save_direction(LatentDirection("age", torch.ones(18, 512), start=4, end=8, default_strength=2.5,
                                   extras={"description": "older / younger"}), tmp_path / "age.safetensors")
    (tmp_path / "broken.pt").write_bytes(b"not a tensor file")
    bridge.set_fallback_folder("latent_directions", [str(tmp_path)])
    try:
        catalog = editing.direction_catalog()
    finally:
        bridge._fallback_paths.pop("latent_directions", None)
    assert catalog["age.safetensors"] == {"kind": "add", "layers": "4..7", "default_strength": 2.5,
                                          "description": "older / younger"}
    assert catalog["broken.pt"]["kind"] == "unreadable"
    smile = catalog["preset: ganspace ffhq smile"]
    assert smile["kind"] == "GANSpace preset" and "ffhq_pca.pt" in smile["description"]
    assert editing.SEFA_ENTRY in catalog
    assert set(catalog) >= set(editing.TransEditLoadDirection.INPUT_TYPES()["required"]["direction"][0]) - {""}
