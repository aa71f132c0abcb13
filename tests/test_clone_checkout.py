"""The checkout cloned as a user clones it runs its own tests: under the README's folder name (ComfyUI-TransEdit,
not a Python identifier, where pytest once imported the root __init__.py as a top-level module and every test
errored at collection) and under a name with spaces, dots and brackets. Each clone runs `./dev.sh test` on a real
slice of the suite (unit tests and an e2e run on a real ComfyUI server) and the other runs `./dev.sh demo` on one
workflow.

The clone gets the checkout's files as they are now (tracked and untracked-but-not-ignored: what a commit of
the work tree would hold) and its own .venv, which dev.sh fills as on a fresh machine except that the heavy
packages (torch, ComfyUI's requirements) are seen from this environment through a .pth file, and the ComfyUI
cache is shared: what is under test is dev.sh, the clone's own editable install and the folder name.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import comfy_servers  # noqa: E402


def _checkout_files() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout: {proc.stderr.decode(errors='replace').strip()}")
    return [f for f in proc.stdout.decode().split("\0") if f and (REPO / f).is_file()]


def clone(dest: Path) -> Path:
    """The checkout's files at dest, and a .venv there that sees this environment's packages."""
    for rel in _checkout_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    venv = dest / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    # plain path lines: this environment's packages, but not its own .pth files (its editable `transedit`
    # points at this checkout, and the clone installs its own)
    (site / "zz_parent_environment.pth").write_text("".join(p + "\n" for p in sorted(parent)))
    return dest


def run_dev(clone_dir: Path, *args: str) -> str:
    env = dict(os.environ, TRANSEDIT_SHARED=str(comfy_servers.SHARED),
               TRANSEDIT_COMFYUI_CACHE=str(comfy_servers.DEFAULT_CACHE.resolve()),
               TRANSEDIT_E2E_SERVERS="comfyui-0.33.0", PYTHONDONTWRITEBYTECODE="1")
    for name in ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "TRANSEDIT_COMFYUI_DIR"):
        env.pop(name, None)
    proc = subprocess.run(["./dev.sh", *args], cwd=clone_dir, env=env, capture_output=True, text=True,
                          timeout=3600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"./dev.sh {' '.join(args)} in {clone_dir.name!r} failed:\n{out[-6000:]}"
    return out


def _counts(out: str) -> dict[str, int]:
    last = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|error)", line)][-1]
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", last)}


def test_a_clone_named_as_the_readme_says_runs_its_tests(tmp_path):
    readme = (REPO / "README.md").read_text()
    assert "ComfyUI-TransEdit" in re.search(r"git clone \S+/(\S+)", readme).group(1)
    repo_clone = clone(tmp_path / "ComfyUI-TransEdit")
    needs_e2e = comfy_servers.source_of(comfy_servers.RELEASES["0.33.0"]) is not None
    tests = ["tests/test_package.py", "tests/test_nodes_stylegan.py", "tests/test_node_schema.py"]
    if needs_e2e:
        tests += ["tests/e2e/test_workflows.py::test_object_info_lists_every_pack_node",
                  "tests/e2e/test_workflows.py::test_seed_shifts_the_batch"]
    out = run_dev(repo_clone, "test", *tests, "-p", "no:cacheprovider")
    counts = _counts(out)
    assert counts.get("passed", 0) >= 20 and not counts.get("failed") and not counts.get("error") \
        and not counts.get("errors"), out[-3000:]
    # the clone tested its own code: its editable install points at the clone
    where = subprocess.run([str(repo_clone / ".venv/bin/python"), "-c", "import transedit; print(transedit.__file__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().parent == repo_clone.resolve(), where
    if needs_e2e:
        assert "comfyui-0.33.0: 2 passed" in out, out[-3000:]


def test_a_clone_with_spaces_and_dots_in_its_name_runs_tests_and_the_demo(tmp_path):
    odd = clone(tmp_path / "my TransEdit v1.2 (copy)")
    out = run_dev(odd, "test", "tests/test_package.py", "tests/test_nodes_compare.py", "-p", "no:cacheprovider")
    counts = _counts(out)
    assert counts.get("passed", 0) >= 10 and not counts.get("failed") and not counts.get("errors"), out[-3000:]
    if comfy_servers.source_of(comfy_servers.RELEASES["0.33.0"]) is None:
        pytest.skip("no ComfyUI 0.33.0 source here for the demo")
    out = run_dev(odd, "demo", "--workflow", "stylegan_generate", "--out", str(tmp_path / "demo out"))
    assert list((tmp_path / "demo out" / "stylegan_generate").glob("*.png")), out[-3000:]
