"""Workflow thumbnails (workflows/<name>.jpg, shown by ComfyUI versions that list custom-node templates) from
the real-browser test's screenshots:

    ./dev.sh test tests/e2e/test_browser.py && .venv/bin/python tests/make_thumbnails.py [WORKFLOW ...]

With workflow names (stems), only their thumbnails are rewritten.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# the current server with its pinned frontend (every server kind has a folder of screenshots)
SHOTS = Path(os.environ.get("TRANSEDIT_ARTIFACTS", REPO / "test_artifacts")) / "browser" / \
    os.environ.get("TRANSEDIT_THUMBNAIL_SERVER", "comfyui-0.33.0")
SIZE = (768, 480)


def main() -> int:
    made, only = 0, set(sys.argv[1:])
    for wf in sorted((REPO / "workflows").glob("*.json")):
        if only and wf.stem not in only:
            continue
        executed, loaded = SHOTS / f"{wf.stem}.executed.png", SHOTS / f"{wf.stem}.png"
        shot = executed if executed.is_file() else loaded  # a run's result shows more than an empty graph
        if not shot.is_file():
            print(f"no screenshot for {wf.name} in {SHOTS}", file=sys.stderr)
            continue
        with Image.open(shot) as im:
            thumb = im.convert("RGB")
            thumb.thumbnail(SIZE, Image.LANCZOS)
            tmp = wf.with_suffix(".jpg.tmp")
            thumb.save(tmp, format="JPEG", quality=82, optimize=True)
            os.replace(tmp, wf.with_suffix(".jpg"))
            made += 1
    print(f"wrote {made} thumbnails")
    return 0 if made else 1


if __name__ == "__main__":
    sys.exit(main())
