"""Every relative link, image and #anchor in the front page (README.md) and the docs pages (docs/*.md) resolves: the
file exists inside the repository and the anchor is a heading of the page it points to, with the ids GitHub gives
headings. Every docs page is linked from the front page. Links to other sites are not fetched (no network in CI)."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_FENCE = re.compile(r"^(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_LINK = re.compile(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", re.IGNORECASE)


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks, with inline code spans blanked (no links live there)."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, re.sub(r"`[^`]*`", lambda m: " " * len(m.group()), line)


def heading_ids(text: str) -> set[str]:
    """The ids GitHub gives a page's headings: the heading's text (link targets and formatting dropped), lower
    case, everything but letters, digits, spaces, '-' and '_' removed, spaces as '-'; repeats get -1, -2, ..."""
    ids: set[str] = set()
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line.lstrip()):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if not m:
            continue
        title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # [text](link) -> text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in ids:
            n += 1
            candidate = f"{slug}-{n}"
        ids.add(candidate)
    return ids


def links(text: str) -> list[tuple[int, str]]:
    found = []
    for number, line in _prose_lines(text):
        found += [(number, target) for target in _MD_LINK.findall(line) + _HTML_LINK.findall(line)]
    return found


def link_problems(page: Path, root: Path = REPO) -> list[str]:
    """Broken relative links and anchors of one markdown page, as 'page:line: target: why'."""
    problems = []
    text = page.read_text(encoding="utf-8")
    where = page.relative_to(root).as_posix()
    for number, target in links(text):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
            continue  # another site (https:, mailto:): not fetched
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page.resolve()
        if not resolved.is_relative_to(root.resolve()):
            problems.append(f"{where}:{number}: {target}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}:{number}: {target}: no such file")
            continue
        if anchor:
            if resolved.suffix != ".md" or resolved.is_dir():
                problems.append(f"{where}:{number}: {target}: an anchor into a file that is not a markdown page")
            elif anchor not in heading_ids(resolved.read_text(encoding="utf-8")):
                problems.append(f"{where}:{number}: {target}: no heading '{anchor}' in "
                                f"{resolved.relative_to(root.resolve()).as_posix()}")
    return problems


def orphan_pages(root: Path = REPO) -> list[str]:
    """docs pages the front page does not link to."""
    linked = {(root / t.partition("#")[0]).resolve() for _, t in links((root / "README.md").read_text(encoding="utf-8"))}
    return [p.relative_to(root).as_posix() for p in sorted((root / "docs").glob("*.md")) if p.resolve() not in linked]


def pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def test_every_link_and_anchor_of_the_front_page_and_the_docs_resolves():
    assert len(pages()) > 5
    assert [p for page in pages() for p in link_problems(page)] == []


def test_every_docs_page_is_linked_from_the_front_page():
    assert orphan_pages() == []


def test_the_front_page_stays_short():
    # what an artist reads in five minutes; the rest belongs in docs/
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


# ------------------------------------------------------------------------------------------ planted faults
def test_planted_broken_links_and_anchors_are_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "pic.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "docs" / "guide.md").write_text(
        "# Guide\n\n## Face video\n\n## Face video\n\n### Training encoders (`python -m transedit.train`)\n\n"
        "```bash\n# not a heading\n```\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Front\n\n## Install\n\n"
        "[ok](docs/guide.md) [ok](docs/guide.md#face-video) [ok](docs/guide.md#face-video-1) "
        "[ok](#install) ![ok](pic.jpg) <img src=\"pic.jpg\" width=\"9\"> [web](https://example.com/x#y)\n"
        "[ok](docs/guide.md#training-encoders-python--m-transedittrain)\n"
        "`[in code](missing.md)`\n\n```\n[in a fence](missing.md)\n```\n"
        "[gone](docs/missing.md)\n"
        "[bad anchor](docs/guide.md#face-videos)\n"
        "[bad local anchor](#not-here)\n"
        "[fenced heading](docs/guide.md#not-a-heading)\n"
        "<img src=\"workflows/gone.jpg\">\n"
        "[outside](../../etc/passwd)\n"
        "[anchor into a picture](pic.jpg#x)\n")
    problems = link_problems(readme, tmp_path)
    assert [p.split(": ", 1)[0] for p in problems] == [f"README.md:{n}" for n in (12, 13, 14, 15, 16, 17, 18)], problems
    assert "docs/missing.md: no such file" in problems[0]
    assert "no heading 'face-videos' in docs/guide.md" in problems[1]
    assert "no heading 'not-here' in README.md" in problems[2]
    assert "no heading 'not-a-heading'" in problems[3]
    assert "workflows/gone.jpg: no such file" in problems[4]
    assert "points outside the repository" in problems[5]
    assert "not a markdown page" in problems[6]
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    assert orphan_pages(tmp_path) == ["docs/orphan.md"]
