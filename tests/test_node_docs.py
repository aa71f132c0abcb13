"""js/docs/<NodeId>.md (the frontend's node help) is generated from the nodes and must be current."""
import node_docs


def test_help_pages_are_current():
    expected = node_docs.expected_docs()
    present = {p.name: p.read_text() for p in node_docs.DOCS.glob("*.md")}
    stale = sorted(n for n in expected if present.get(n) != expected[n])
    extra = sorted(set(present) - set(expected))
    assert not stale and not extra, f"out of date: {stale}, unknown: {extra}; run python tests/node_docs.py"


def test_loader_pages_say_where_weights_go():
    docs = node_docs.expected_docs()
    for node_id, (folder, sources) in node_docs.WEIGHTS.items():
        page = docs[f"{node_id}.md"]
        assert f"ComfyUI/{folder}" in page and all(url in page for _, url in sources), node_id
    assert "| `num_samples` |" in docs["TransEditPUTInpaint.md"]
