"""Shared test fixtures. Tests that need ../shared skip with a reason when it is absent."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSEDIT_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# TRANSEDIT_TEST_DEVICE=cuda runs the parity tests on a GPU (TF32 off: fp32 must mean fp32).
TEST_DEVICE = torch.device(os.environ.get("TRANSEDIT_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def fixture_dir(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"parity fixtures not found at {path} (../shared is only present in the project "
                    "checkout and CI; a user's clone has no golden data)")
    return path


@pytest.fixture(scope="session")
def sg2_fixtures() -> Path:
    return fixture_dir("stylegan2_style_transformer")


@pytest.fixture
def tiny_config():
    from transedit.models.stylegan.generator import StyleGAN2Config

    return StyleGAN2Config(size=32, style_dim=32, n_mlp=2, channels={4: 16, 8: 16, 16: 16, 32: 8})


@contextlib.contextmanager
def model_folders(root: Path, folders):
    """Point the pack's model folders (no ComfyUI in unit tests) at root/<folder>, created empty; restored
    afterwards."""
    from transedit.nodes import comfy_bridge as bridge

    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        bridge.set_fallback_folder(folder, [str(root / folder)])
    try:
        yield root
    finally:
        for folder in folders:
            bridge._fallback_paths.pop(folder, None)


_SERVER_NOTE: list = []  # where the servers' sources came from, for the summary


def _server_kinds() -> list[str]:
    """The ComfyUI servers the e2e and browser tests run against: TRANSEDIT_E2E_SERVERS (comma-separated, e.g.
    comfyui-0.3.64) when set, else the current ones (0.33.0 with its pinned and the newest frontend, 0.3.64)
    when their source can be had (../shared, the cache, GitHub), else the 2024 server from PyPI."""
    import comfy_harness as h  # tests/ is on sys.path (this file's folder)

    chosen = [k.strip() for k in os.environ.get("TRANSEDIT_E2E_SERVERS", "").split(",") if k.strip()]
    unknown = set(chosen) - set(h.SERVER_KINDS)
    if unknown:
        raise pytest.UsageError(f"TRANSEDIT_E2E_SERVERS: unknown {sorted(unknown)}; known: {h.SERVER_KINDS}")
    if chosen:
        return chosen
    choice = h.default_server_kinds()
    _SERVER_NOTE.append(h.describe_sources(choice))
    return choice.kinds


@pytest.fixture(scope="session", params=_server_kinds())
def comfy_root(request):
    """A ComfyUI of each kind (installed on first use). Skips when one cannot be installed; fails instead when
    TRANSEDIT_REQUIRE_E2E is set (CI)."""
    import comfy_harness as h

    try:
        return h.ensure_server(request.param)
    except h.ComfyUIUnavailable as e:
        if os.environ.get("TRANSEDIT_REQUIRE_E2E"):
            pytest.fail(f"{request.param} could not be installed and TRANSEDIT_REQUIRE_E2E is set: {e}")
        pytest.skip(f"{request.param} could not be installed (no package index reachable, or no ComfyUI source?): "
                    f"{e}")


def pytest_terminal_summary(terminalreporter):
    """One line per ComfyUI server the e2e / browser tests ran against: passed, failed, skipped."""
    import re

    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            found = re.search(r"\[(comfyui-[\w.]+?(?:-newest-frontend)?)(?:-|\])", getattr(report, "nodeid", ""))
            if found and getattr(report, "when", "call") in ("call", "setup"):
                if outcome == "passed" and report.when != "call":
                    continue
                kind = counts.setdefault(found.group(1), {})
                kind[outcome] = kind.get(outcome, 0) + 1
    if counts:
        terminalreporter.section("TransEdit e2e per ComfyUI server")
        for note in _SERVER_NOTE:
            terminalreporter.write_line(note)
        for kind, c in sorted(counts.items()):
            terminalreporter.write_line(f"{kind}: " + ", ".join(f"{c[k]} {k}" for k in ("passed", "failed", "error",
                                                                                       "skipped") if c.get(k)))
