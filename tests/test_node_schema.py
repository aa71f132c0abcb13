"""Stable node schema: the committed snapshot (tests/node_schema.json) must match what the nodes declare, and
changes that would break saved workflows need a schema bump with a migration note in CHANGELOG.md."""
import copy

import pytest

import node_schema as ns


@pytest.fixture(scope="module")
def current():
    return ns.current_schema()


def test_snapshot_is_up_to_date(current):
    snap = ns.load_snapshot()
    problems = ns.breaking_changes(snap["nodes"], current)
    assert not problems, ("incompatible node changes (saved workflows would break):\n  " + "\n  ".join(problems)
                          + "\nIf intended: python tests/node_schema.py --update --migration-note '<what to do>'")
    added = sorted(set(current) - set(snap["nodes"]))
    assert current == snap["nodes"], (f"node schema changed compatibly (new nodes {added} or inputs); "
                                      "record it: python tests/node_schema.py --update")


def test_every_breaking_version_has_a_migration_note():
    snap = ns.load_snapshot()
    assert snap["schema_version"] >= 1
    for version in snap.get("breaking_versions", []):
        assert ns.changelog_has_note(version), f"CHANGELOG.md has no '{ns.MIGRATIONS_HEADING}' note 'schema {version}:'"


def test_defaults_are_valid(current):
    for node_id, node in current.items():
        assert node_id.startswith("TransEdit") and node["display_name"].startswith("TransEdit")
        for inp in node["required"] + node["optional"]:
            if "default" not in inp:
                continue
            if inp["type"] == "COMBO":
                assert inp["default"] in inp["choices"], (node_id, inp["name"])
            elif "min" in inp and "max" in inp:
                assert inp["min"] <= inp["default"] <= inp["max"], (node_id, inp["name"])


BASE = {"TransEditX": {"display_name": "X", "category": "c",
                       "required": [{"name": "a", "type": "IMAGE"}, {"name": "n", "type": "INT", "default": 1,
                                                                     "min": 0, "max": 9},
                                    {"name": "mode", "type": "COMBO", "choices": ["p", "q"]}],
                       "optional": [{"name": "o", "type": "FLOAT", "default": 0.5}],
                       "outputs": ["IMAGE"], "output_names": ["IMAGE"], "output_node": False}}


def _changed(edit):
    new = copy.deepcopy(BASE)
    edit(new["TransEditX"])
    return ns.breaking_changes(BASE, new)


@pytest.mark.parametrize("edit, expected", [
    (lambda n: n["required"].pop(1), "removed, renamed or moved"),
    (lambda n: n["required"][1].update(name="count"), "removed, renamed or moved"),
    (lambda n: n["required"].reverse(), "removed, renamed or moved"),
    (lambda n: n["required"][1].update(type="FLOAT"), "type INT -> FLOAT"),
    (lambda n: n["required"][2]["choices"].remove("q"), "lost choices ['q']"),
    (lambda n: n["required"][1].update(max=5), "max 9 -> 5"),
    (lambda n: n["required"].append({"name": "z", "type": "INT"}), "new required input"),
    (lambda n: n["optional"].insert(0, {"name": "z", "type": "INT"}), "removed, renamed or moved"),
    (lambda n: n.update(outputs=["MASK"]), "outputs"),
])
def test_breaking_changes_are_caught(edit, expected):
    problems = _changed(edit)
    assert problems and expected in problems[0], problems


@pytest.mark.parametrize("edit", [
    lambda n: n["optional"].append({"name": "z", "type": "INT", "default": 0}),
    lambda n: n["required"][2]["choices"].append("r"),
    lambda n: n["required"][1].update(default=3, max=99),
    lambda n: n.update(outputs=["IMAGE", "MASK"], display_name="X (new name)"),
])
def test_compatible_changes_pass(edit):
    assert _changed(edit) == []
    assert ns.breaking_changes(BASE, {}) == ["TransEditX: node removed"]
