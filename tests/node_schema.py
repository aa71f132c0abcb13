"""The pack's node schema (every node's id, inputs with types/order/defaults, outputs), its committed snapshot
and the compatibility rules that keep shared workflows working across updates.

    python tests/node_schema.py                 # show what changed against the snapshot
    python tests/node_schema.py --update        # accept compatible changes (new nodes, new optional inputs last)
    python tests/node_schema.py --update --migration-note "TransEditFoo: input bar renamed to baz; ..."
                                                # accept a breaking change: bumps schema_version and adds the note
                                                # to CHANGELOG.md under "Schema migrations"

Saved workflows store widget values by position and links by input name, so a workflow from an older version
keeps loading as long as, for every node: the node still exists, its required inputs keep their names, types
and order (none added), optional inputs only grow at the end, no combo choice disappears, and outputs only
grow at the end. Anything else is a breaking change and needs a migration note.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tests" / "node_schema.json"
CHANGELOG = REPO / "CHANGELOG.md"
MIGRATIONS_HEADING = "## Schema migrations"


def _input_entry(name: str, spec) -> dict:
    kind, opts = (spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    entry = {"name": name}
    if isinstance(kind, (list, tuple)):
        entry["type"] = "COMBO"
        entry["choices"] = list(kind)
        if "default" in opts:
            entry["default"] = opts["default"]
    else:
        entry["type"] = str(kind)
        for key in ("default", "min", "max"):
            if key in opts:
                entry[key] = opts[key]
    return entry


@contextmanager
def empty_model_folders():
    """Every model folder pointed at an empty directory, so file lists are not part of what is generated."""
    from transedit.nodes import comfy_bridge as bridge

    saved = dict(bridge._fallback_paths)
    with tempfile.TemporaryDirectory() as empty:
        for folder in bridge.MODEL_FOLDERS:
            bridge.set_fallback_folder(folder, [empty])
        try:
            yield
        finally:
            bridge._fallback_paths.clear()
            bridge._fallback_paths.update(saved)


def current_schema() -> dict:
    """The schema as the nodes declare it, with every model folder empty (so file lists are not part of it)."""
    import transedit as package

    nodes = {}
    with empty_model_folders():
        for node_id, cls in sorted(package.NODE_CLASS_MAPPINGS.items()):
            spec = cls.INPUT_TYPES()
            nodes[node_id] = {
                "display_name": package.NODE_DISPLAY_NAME_MAPPINGS.get(node_id, node_id),
                "category": getattr(cls, "CATEGORY", ""),
                "required": [_input_entry(k, v) for k, v in spec.get("required", {}).items()],
                "optional": [_input_entry(k, v) for k, v in spec.get("optional", {}).items()],
                "outputs": list(cls.RETURN_TYPES),
                "output_names": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
                "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
            }
    return nodes


def breaking_changes(old: dict, new: dict) -> list[str]:
    """What in `new` would break a workflow saved against `old` (empty: compatible)."""
    problems = []
    for node_id, was in old.items():
        now = new.get(node_id)
        if now is None:
            problems.append(f"{node_id}: node removed")
            continue
        for section in ("required", "optional"):
            before, after = was[section], now[section]
            for i, inp in enumerate(before):
                if i >= len(after) or after[i]["name"] != inp["name"]:
                    problems.append(f"{node_id}: {section} input '{inp['name']}' removed, renamed or moved")
                    break
                if after[i]["type"] != inp["type"]:
                    problems.append(f"{node_id}: input '{inp['name']}' type {inp['type']} -> {after[i]['type']}")
                elif inp["type"] == "COMBO":
                    gone = [c for c in inp["choices"] if c not in after[i]["choices"]]
                    if gone:
                        problems.append(f"{node_id}: input '{inp['name']}' lost choices {gone}")
                for bound, worse in (("min", lambda a, b: b > a), ("max", lambda a, b: b < a)):
                    if bound in inp and bound in after[i] and worse(inp[bound], after[i][bound]):
                        problems.append(f"{node_id}: input '{inp['name']}' {bound} {inp[bound]} -> {after[i][bound]}")
        added_required = [i["name"] for i in now["required"][len(was["required"]):]]
        if added_required:
            problems.append(f"{node_id}: new required input(s) {added_required} (new inputs must be optional)")
        if now["outputs"][:len(was["outputs"])] != was["outputs"]:
            problems.append(f"{node_id}: outputs {was['outputs']} -> {now['outputs']} (may only grow at the end)")
    return problems


def load_snapshot() -> dict:
    return json.loads(SNAPSHOT.read_text())


def changelog_has_note(version: int) -> bool:
    if not CHANGELOG.is_file():
        return False
    text = CHANGELOG.read_text()
    if MIGRATIONS_HEADING not in text:
        return False
    return f"schema {version}:" in text.split(MIGRATIONS_HEADING, 1)[1]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def update(note: str | None) -> int:
    new = current_schema()
    snap = load_snapshot() if SNAPSHOT.is_file() else {"schema_version": 1, "breaking_versions": [], "nodes": {}}
    problems = breaking_changes(snap["nodes"], new)
    version = snap["schema_version"]
    breaking = list(snap.get("breaking_versions", []))
    if problems:
        if not note:
            print("breaking changes; re-run with --migration-note '<what users must do>':\n  " + "\n  ".join(problems))
            return 1
        version += 1
        breaking.append(version)
        text = CHANGELOG.read_text() if CHANGELOG.is_file() else "# Changelog\n"
        if MIGRATIONS_HEADING not in text:
            text = text.rstrip("\n") + f"\n\n{MIGRATIONS_HEADING}\n"
        entry = f"\n- schema {version}: {note}\n" + "".join(f"  - {p}\n" for p in problems)
        _write_atomic(CHANGELOG, text.rstrip("\n") + "\n" + entry)
    _write_atomic(SNAPSHOT, json.dumps({"schema_version": version, "breaking_versions": breaking, "nodes": new},
                                       indent=1, sort_keys=False) + "\n")
    print(f"wrote {SNAPSHOT.relative_to(REPO)} (schema {version})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--update", action="store_true")
    ap.add_argument("--migration-note")
    args = ap.parse_args(argv)
    if args.update:
        return update(args.migration_note)
    snap = load_snapshot()
    new = current_schema()
    problems = breaking_changes(snap["nodes"], new)
    print("identical to the snapshot" if new == snap["nodes"] else "differs from the snapshot")
    for p in problems:
        print("BREAKING:", p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
