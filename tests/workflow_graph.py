"""Workflow graphs as data, no server needed: the frontend's saved format (nodes, links, widgets_values) turned
into an API prompt the way the frontend's graphToPrompt does, the saved links checked against a server's
/object_info, and parts of a prompt cut away. comfy_harness.py runs what this module builds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Mapping

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"

# ComfyUI's frontend (this version) adds a "control_after_generate" combo after seed-like widgets and
# stores its value in widgets_values, although it is never sent to the server.
_CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize", "increment-wrap"}
_WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}  # "COMBO": V3 nodes send the choices as options
# Frontend-only nodes: never sent to the server.
_VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MODE_NEVER, MODE_BYPASS = 2, 4
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"  # a combo whose choice adds inputs of its own (V3 nodes, ComfyUI >= 0.2x)


def _is_widget(spec) -> bool:
    type_ = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if opts.get("forceInput"):
        return False
    return isinstance(type_, list) or type_ in _WIDGET_TYPES


def _widget_value_count(name: str, spec) -> int:
    """How many widgets_values entries the frontend stores for this input (1 + companions)."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    extra = 0
    if opts.get("image_upload") or opts.get("video_upload") or opts.get("audio_upload"):
        extra += 1  # the upload button widget (its value is "image" for pictures and clips alike)
    return 1 + extra


def _take_widget_values(name: str, spec, values: list, i: int, inputs: dict) -> int:
    """Read input `name`'s value(s) from widgets_values at position i into `inputs`; returns the next position.

    A dynamic combo (V3 nodes' COMFY_DYNAMICCOMBO_V3, e.g. 0.33's Save Video format -> codec -> encoding) stores
    its own value, then the values of the inputs its chosen option adds, depth first, named "<combo>.<input>"
    (as the frontend sends them)."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if spec[0] == DYNAMIC_COMBO:
        chosen = values[i] if i < len(values) else None
        if chosen is not None:
            inputs[name] = chosen
        option = next((o for o in opts.get("options", []) if o.get("key") == chosen), None)
        i += 1
        for section in ("required", "optional"):
            for child, child_spec in ((option or {}).get("inputs", {}).get(section) or {}).items():
                i = _take_widget_values(f"{name}.{child}", child_spec, values, i, inputs)
        return i
    if not _is_widget(spec):
        return i
    if i < len(values):
        inputs[name] = values[i]
    i += _widget_value_count(name, spec)
    seed_like = opts.get("control_after_generate") or (spec[0] == "INT" and "seed" in name.lower())
    if seed_like and i < len(values) and values[i] in _CONTROL_VALUES:
        i += 1
        if isinstance(spec[0], list) and i < len(values) and isinstance(values[i], str) and values[i] not in spec[0]:
            i += 1  # the combo's control_filter_list text
    return i


def ui_to_api(ui_workflow: dict, object_info: Mapping[str, dict]) -> dict:
    """Convert a frontend-saved workflow (nodes/links/widgets_values) into an API prompt.

    Follows the frontend's graphToPrompt: Note/Reroute/PrimitiveNode are frontend-only (Reroutes are
    followed, a PrimitiveNode's value is inlined), muted nodes (mode 2) are dropped, bypassed nodes
    (mode 4) pass their first input of the matching type through.
    """
    nodes = {n["id"]: n for n in ui_workflow["nodes"]}
    links = {}
    for link in ui_workflow.get("links", []):
        if isinstance(link, dict):  # newer frontends may save links as objects
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link.get("type"))
        else:
            links[link[0]] = (link[1], link[2], link[5] if len(link) > 5 else None)

    def source(link_id, depth=0):
        """-> ("link", node_id, slot) or ("value", v) or None for a dangling link."""
        if depth > 100:
            raise ValueError("cycle of Reroute/bypassed nodes in workflow")
        if link_id is None or link_id not in links:
            return None
        from_id, slot, link_type = links[link_id]
        node = nodes.get(from_id)
        if node is None:
            return None
        if node["type"] == "Reroute":
            ins = node.get("inputs") or []
            return source(ins[0].get("link"), depth + 1) if ins else None
        if node["type"] == "PrimitiveNode":
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        mode = node.get("mode", 0)
        if mode == MODE_NEVER:
            return None
        if mode == MODE_BYPASS:
            outputs = node.get("outputs") or []
            out_type = outputs[slot].get("type", link_type) if slot < len(outputs) else link_type
            for inp in node.get("inputs") or []:
                if inp.get("link") is not None and inp.get("type") == out_type:
                    return source(inp["link"], depth + 1)
            return None
        return ("link", from_id, slot)

    prompt = {}
    for node_id, node in sorted(nodes.items()):
        node_type = node["type"]
        if node_type in _VIRTUAL_NODES or node.get("mode", 0) in (MODE_NEVER, MODE_BYPASS):
            continue
        info = object_info.get(node_type)
        if info is None:
            raise ValueError(f"node {node_id}: type '{node_type}' is not known to this ComfyUI "
                             "(missing custom node pack, or it failed to import)")
        specs = {}
        for section in ("required", "optional"):
            specs.update(info.get("input", {}).get(section, {}) or {})
        linked = {inp["name"]: inp.get("link") for inp in node.get("inputs") or [] if inp.get("link") is not None}

        inputs = {}
        values = node.get("widgets_values")
        if isinstance(values, dict):
            for name, spec in specs.items():
                if _is_widget(spec) and name in values:
                    inputs[name] = values[name]
        else:
            values, i = list(values or []), 0
            for name, spec in specs.items():
                i = _take_widget_values(name, spec, values, i, inputs)
        for name, link_id in linked.items():
            src = source(link_id)
            if src is None:  # dangling, or from a muted node: a converted widget keeps its value
                continue
            inputs[name] = src[1] if src[0] == "value" else [str(src[1]), src[2]]
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs,
                                "_meta": {"title": node.get("title") or info.get("display_name", node_type)}}
    return prompt


def load_workflow(path: os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def workflow_files(directory: os.PathLike = WORKFLOWS_DIR) -> list[Path]:
    return sorted(Path(directory).glob("*.json"))


# ------------------------------------------------------------------- running part of a graph
def _linked_sources(node: dict) -> list[str]:
    return [str(v[0]) for v in node.get("inputs", {}).values() if isinstance(v, list) and len(v) == 2]


def drop_nodes(api_prompt: dict, node_ids: Iterable[str]) -> tuple[dict, list[str]]:
    """An API prompt without node_ids and without everything that takes an input from them, directly
    or further down. Returns (new prompt, dropped ids)."""
    dropped = {str(i) for i in node_ids if str(i) in api_prompt}
    changed = True
    while changed:
        changed = False
        for node_id, node in api_prompt.items():
            if node_id not in dropped and any(src in dropped for src in _linked_sources(node)):
                dropped.add(node_id)
                changed = True
    kept = {k: json.loads(json.dumps(v)) for k, v in api_prompt.items() if k not in dropped}
    return kept, sorted(dropped, key=lambda k: (len(k), k))


def output_node_ids(api_prompt: dict, object_info: Mapping[str, dict]) -> list[str]:
    return [k for k, v in api_prompt.items() if (object_info.get(v["class_type"]) or {}).get("output_node")]


# ------------------------------------------------------------------------ graph type checks
def _input_specs(info: dict) -> dict:
    specs = {}
    for section in ("required", "optional"):
        specs.update(info.get("input", {}).get(section, {}) or {})
    return specs


def _spec_type(spec) -> str:
    type_ = spec[0]
    return "COMBO" if isinstance(type_, list) else str(type_)


def _types_match(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type):
        return True
    # ComfyUI accepts "A,B" (a union) on either side; compare as sets
    return bool(set(str(out_type).split(",")) & set(str(in_type).split(",")))


def check_workflow_types(ui_workflow: dict, object_info: Mapping[str, dict]) -> list[str]:
    """What is wrong with a UI-format workflow against a server's /object_info: node types it does not
    know, links whose origin output type differs from the target input type (either may be "*"),
    slots/inputs that do not exist, and saved slot types that differ from what the server declares.
    Frontend-only nodes (Note, Reroute, PrimitiveNode) are checked by what they connect, not by type.
    Returns human-readable problems (empty = fine)."""
    problems = []
    nodes = {n["id"]: n for n in ui_workflow.get("nodes", [])}
    for node in nodes.values():
        if node["type"] not in _VIRTUAL_NODES and node["type"] not in object_info:
            problems.append(f"node {node['id']}: type '{node['type']}' is not in /object_info")

    def output_type(node, slot):
        if node["type"] in _VIRTUAL_NODES:
            outs = node.get("outputs") or []
            return outs[slot].get("type", "*") if slot < len(outs) else None
        outs = object_info.get(node["type"], {}).get("output") or []
        if slot >= len(outs):
            return None
        t = outs[slot]
        return "COMBO" if isinstance(t, list) else str(t)

    def input_type(node, slot):
        ins = node.get("inputs") or []
        if slot >= len(ins):
            return None, None
        name = ins[slot]["name"]
        if node["type"] in _VIRTUAL_NODES:
            return name, ins[slot].get("type", "*")
        spec = _input_specs(object_info.get(node["type"], {})).get(name)
        return name, (None if spec is None else _spec_type(spec))

    for link in ui_workflow.get("links", []):
        if isinstance(link, dict):
            lid, src, sslot, dst, dslot, ltype = (link["id"], link["origin_id"], link["origin_slot"],
                                                  link["target_id"], link["target_slot"], link.get("type"))
        else:
            lid, src, sslot, dst, dslot, ltype = link[:6]
        s, d = nodes.get(src), nodes.get(dst)
        if s is None or d is None:
            problems.append(f"link {lid}: node {src if s is None else dst} does not exist")
            continue
        if (s["type"] not in _VIRTUAL_NODES and s["type"] not in object_info) or \
                (d["type"] not in _VIRTUAL_NODES and d["type"] not in object_info):
            continue  # reported above
        out_t = output_type(s, sslot)
        name, in_t = input_type(d, dslot)
        where = f"link {lid} ({s['type']} #{src} slot {sslot} -> {d['type']} #{dst} '{name}')"
        if out_t is None:
            problems.append(f"{where}: {s['type']} has no output slot {sslot}")
            continue
        if in_t is None:
            problems.append(f"{where}: {d['type']} has no input " + (f"'{name}'" if name else f"slot {dslot}"))
            continue
        if not _types_match(out_t, in_t):
            problems.append(f"{where}: output type {out_t} does not fit input type {in_t}")
        if ltype is not None and not _types_match(ltype, out_t):
            problems.append(f"{where}: the link is saved as {ltype}, the output is {out_t}")
    for node in nodes.values():
        if node["type"] in _VIRTUAL_NODES or node["type"] not in object_info:
            continue
        server_outs = object_info[node["type"]].get("output") or []
        for i, out in enumerate(node.get("outputs") or []):
            want = server_outs[i] if i < len(server_outs) else None
            want = "COMBO" if isinstance(want, list) else want
            if want is None or not _types_match(out.get("type", "*"), want):
                problems.append(f"node {node['id']} ({node['type']}): output {i} is saved as {out.get('type')}, "
                                f"the server declares {want}")
    return problems
