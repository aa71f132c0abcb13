"""Fixtures shared by the tests that drive a real ComfyUI."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for comfy_harness
import comfy_harness as h  # noqa: E402


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    """The pinned ComfyUI (installed on first use); skips when it cannot be installed, fails instead when
    TRANSEDIT_REQUIRE_E2E is set (CI)."""
    try:
        return h.ensure_comfyui()
    except h.ComfyUIUnavailable as e:
        if os.environ.get("TRANSEDIT_REQUIRE_E2E"):
            pytest.fail(f"ComfyUI could not be installed and TRANSEDIT_REQUIRE_E2E is set: {e}")
        pytest.skip(f"ComfyUI could not be installed (no package index reachable?): {e}")
