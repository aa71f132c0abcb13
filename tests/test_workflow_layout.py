"""The example workflows stay readable after a run: every node that shows a picture once it has run (the pack's
progress previews and compare widgets, ComfyUI's image nodes) has room below it for a square picture as wide
as the node, and no node's box, so grown, covers another's. Current frontends grow a node to show its preview
(seen on 1.58.1: Align Face over Load Encoder); the browser tests check the same after a real run.

`python tests/test_workflow_layout.py --fix` moves nodes down, column by column, until the rule holds."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
TITLE = 30  # LiteGraph's title bar, above pos
GAP = 40
# nodes that draw a picture inside themselves after a run (previews while running, compare widgets, outputs)
PICTURE_NODES = {"TransEditAlignFace", "TransEditGenerate", "TransEditPasteBack", "TransEditCompare",
                 "TransEditPUTInpaint", "TransEditSplice", "TransEditApplySplice", "TransEditSMARTRefine", "TransEditEditStudio",
                 "TransEditPivotalTune", "TransEditStitchingTune",
                 "PreviewImage", "SaveImage", "LoadImage", "LoadVideo", "SaveVideo", "PreviewAny"}


def _size(node) -> tuple[float, float]:
    s = node.get("size", [200, 100])
    return (s["0"], s["1"]) if isinstance(s, dict) else (s[0], s[1])


def grown_box(node) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the node once it shows its picture (title bar included)."""
    w, h = _size(node)
    if node["type"] in PICTURE_NODES:
        h = max(h, 120 + w)  # the widgets, then a square picture as wide as the node
    x, y = node["pos"][0], node["pos"][1]
    return x, y - TITLE, x + w, y + h


def overlaps(graph: dict) -> list[tuple[str, str]]:
    nodes = [n for n in graph["nodes"] if not n.get("flags", {}).get("collapsed")]
    found = []
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            ax0, ay0, ax1, ay1 = grown_box(a)
            bx0, by0, bx1, by1 = grown_box(b)
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                found.append((f"{a['type']}#{a['id']}", f"{b['type']}#{b['id']}"))
    return found


def relayout(graph: dict) -> None:
    """Push nodes down until no grown box overlaps one placed before it (top to bottom, left to right)."""
    placed = []
    for node in sorted(graph["nodes"], key=lambda n: (n["pos"][1], n["pos"][0])):
        while True:
            x0, y0, x1, y1 = grown_box(node)
            hit = [b for b in placed if x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1]
            if not hit:
                break
            node["pos"] = [node["pos"][0], max(b[3] for b in hit) + TITLE + GAP]
        placed.append(grown_box(node))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_nodes_have_room_for_their_pictures(path):
    found = overlaps(json.loads(path.read_text()))
    assert not found, f"{path.name}: nodes would cover each other after a run: {found} (python {__file__} --fix)"


def test_the_check_sees_a_grown_node():
    graph = {"nodes": [{"id": 1, "type": "TransEditAlignFace", "pos": [400, 120], "size": [340, 178]},
                       {"id": 2, "type": "TransEditLoadEncoder", "pos": [400, 360], "size": [340, 78]}]}
    assert overlaps(graph) == [("TransEditAlignFace#1", "TransEditLoadEncoder#2")]
    relayout(graph)
    assert overlaps(graph) == [] and graph["nodes"][1]["pos"][1] > 120 + 460


if __name__ == "__main__" and "--fix" in sys.argv:
    for p in WORKFLOWS:
        g = json.loads(p.read_text())
        if overlaps(g):
            relayout(g)
            text = p.read_text()
            indent = len(text.split("\n")[1]) - len(text.split("\n")[1].lstrip())  # keep the file's own style
            p.write_text(json.dumps(g, indent=indent, ensure_ascii=False) + ("\n" if text.endswith("\n") else ""))
            print("relaid", p.name)
