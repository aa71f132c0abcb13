"""The Comfy Registry archive holds only what runs in ComfyUI, and it runs.

`comfy node pack` / `comfy node publish` (comfy-cli) zip the git-tracked files minus the patterns in `.comfyignore`.
The registry scans every file of that archive and flags a version for findings anywhere in it, test files included
(Comfy-Org/registry-backend#179); a flagged version never reaches ComfyUI-Manager users. So this packs the tree with
comfy-cli itself (the one `./dev.sh validate` installs in .venv-tools) and checks the archive:

- only the pack's own top-level entries (ARCHIVE_TOP_LEVEL): no tests/, benchmarks/, CI or developer scripts;
- what ComfyUI needs is there: every workflow with its thumbnail, the frontend script, a help page per node;
- it imports the way ComfyUI loads a custom-node folder (its `__init__.py` as a package from a folder of any name,
  nothing outside the archive importable as `transedit`), with every node of tests/node_schema.json, and every
  relative import in it, lazy ones included, resolves to a file in it;
- no Python file in it starts a process, evaluates code or opens a network connection (`code_findings`: what counts
  is written there), and the frontend script evaluates no code and fetches nothing but its own server's routes;
- the front page's links resolve inside the archive (README.md is what the registry and Manager show).

Without comfy-cli the checks skip with the reason, except where TRANSEDIT_REQUIRE_REGISTRY_ARCHIVE is set (CI,
which runs `./dev.sh validate` first), where that is a failure. The planted-fault tests at the end run without it.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_CLI = Path(os.environ.get("TRANSEDIT_COMFY_CLI", REPO / ".venv-tools" / "bin" / "comfy"))

# What runs in ComfyUI: the package's entry point and code, the frontend (with the node help pages), the example
# workflows and their thumbnails, the user docs, and the files the registry reads (pyproject.toml) or shows.
ARCHIVE_TOP_LEVEL = {"__init__.py", "nodes", "models", "js", "workflows", "docs",
                     "pyproject.toml", "requirements.txt", "README.md", "LICENSE", "CHANGELOG.md"}
DEVELOPER_FOLDERS = {"tests", "benchmarks", ".ci", ".github"}

# ------------------------------------------------------------------------------------------ the Python scan
# Modules whose import is a process start or a network client. urllib.parse and aiohttp's server side are not:
# nodes/http_routes.py answers requests on ComfyUI's own server (routes registered through the bridge); it never
# connects anywhere.
PROCESS_OR_NETWORK_MODULES = {
    "subprocess", "pty", "asyncio.subprocess", "socket", "socketserver", "ssl", "http.client", "urllib.request",
    "urllib3", "requests", "httpx", "websocket", "websockets", "ftplib", "smtplib", "telnetlib", "poplib",
    "imaplib", "xmlrpc.client", "aiohttp.client", "aiohttp.connector", "webbrowser",
}
AIOHTTP_SERVER_NAMES = {"web", "http_exceptions", "hdrs", "web_exceptions", "web_request", "web_response"}
# os functions that run a program.
OS_PROCESS_FUNCTIONS = {"system", "popen", "startfile", "fork", "forkpty", "posix_spawn", "posix_spawnp"} | {
    f"{stem}{tail}" for stem in ("exec", "spawn") for tail in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")}
# Builtins that run source text or import by computed name.
CODE_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _module_findings(module: str, line: int) -> list[str]:
    for bad in PROCESS_OR_NETWORK_MODULES:
        if module == bad or module.startswith(bad + "."):
            return [f"line {line}: imports {module}"]
    return []


class _Scan(ast.NodeVisitor):
    """Collects findings; tracks which names are bound to os / aiohttp / builtins / urllib and which function
    parameters or locals shadow a builtin (Splice's `compile` input is a bool, not the builtin)."""

    def __init__(self):
        self.findings: list[str] = []
        self.aliases: dict[str, str] = {}  # local name -> module it stands for
        self.shadowed: list[set[str]] = [set()]

    def visit_Import(self, node):
        for a in node.names:
            self.findings += _module_findings(a.name, node.lineno)
            if a.name.startswith("aiohttp.") and a.name.split(".")[1] not in AIOHTTP_SERVER_NAMES:
                self.findings.append(f"line {node.lineno}: imports {a.name} (an aiohttp client module)")
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node):
        if node.level:  # the pack's own modules
            return
        module = node.module or ""
        self.findings += _module_findings(module, node.lineno)
        for a in node.names:
            self.findings += _module_findings(f"{module}.{a.name}", node.lineno)
            if module == "os" and a.name in OS_PROCESS_FUNCTIONS:
                self.findings.append(f"line {node.lineno}: imports os.{a.name}")
            if module == "builtins" and a.name in CODE_BUILTINS:
                self.findings.append(f"line {node.lineno}: imports builtins.{a.name}")
            if module == "aiohttp" and a.name not in AIOHTTP_SERVER_NAMES:
                self.findings.append(f"line {node.lineno}: imports aiohttp.{a.name} (aiohttp's client side)")

    def _function(self, node):
        args = node.args
        names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
        names |= {a.arg for a in (args.vararg, args.kwarg) if a}
        names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        self.shadowed.append(names)
        self.generic_visit(node)
        self.shadowed.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Name) and f.id in CODE_BUILTINS and not any(f.id in s for s in self.shadowed):
            self.findings.append(f"line {node.lineno}: calls {f.id}()")
        self.generic_visit(node)

    def visit_Attribute(self, node):
        if isinstance(node.value, ast.Name):
            module = self.aliases.get(node.value.id)
            name = f"{module}.{node.attr}" if module else None
            if module == "os" and node.attr in OS_PROCESS_FUNCTIONS:
                self.findings.append(f"line {node.lineno}: uses os.{node.attr}")
            elif module == "builtins" and node.attr in CODE_BUILTINS:
                self.findings.append(f"line {node.lineno}: uses builtins.{node.attr}")
            elif module == "aiohttp" and node.attr not in AIOHTTP_SERVER_NAMES and not node.attr.startswith("__"):
                self.findings.append(f"line {node.lineno}: uses aiohttp.{node.attr} (aiohttp's client side)")
            elif name:
                self.findings += _module_findings(name, node.lineno)
        self.generic_visit(node)


def code_findings(source: str) -> list[str]:
    """What in one Python file starts a process, evaluates source text, imports by computed name or opens a network
    connection: imports of PROCESS_OR_NETWORK_MODULES (and attribute access like urllib.request), os.system/popen/
    exec*/spawn*/fork, calls of eval/exec/compile/__import__ that are the builtins (not a parameter of that name,
    not a method such as `module.eval()`, `torch.compile` or `re.compile`), and aiohttp beyond its server side."""
    scan = _Scan()
    scan.visit(ast.parse(source))
    return scan.findings


JS_FINDINGS = {
    "evaluates code": re.compile(r"\beval\s*\(|\bnew\s+Function\s*\(|set(?:Timeout|Interval)\s*\(\s*[\"'`]"),
    "fetches from another host": re.compile(r"\b(?:fetch|fetchApi|open)\s*\(\s*[\"'`](?:https?:)?//"),
    "opens a raw connection": re.compile(r"\bnew\s+(?:WebSocket|XMLHttpRequest|EventSource)\s*\("),
}


def js_findings(source: str) -> list[str]:
    """The frontend script talks to its own ComfyUI server only (relative routes through api.fetchApi) and evaluates
    no code; links to the docs are plain URLs, not fetched."""
    found = []
    for number, line in enumerate(source.splitlines(), 1):
        found += [f"line {number}: {what}" for what, pattern in JS_FINDINGS.items() if pattern.search(line)]
    return found


# ------------------------------------------------------------------------------------------ the archive checks
def next_commit_files() -> list[str]:
    """The checkout's files as its next commit would hold them: tracked and untracked-not-ignored, present in the
    working tree (a tracked file deleted there is not packed)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sorted({rel for rel in listed if rel and (REPO / rel).is_file()})


def stage_tree(dest: Path, comfyignore: str | None = None) -> Path:
    """next_commit_files() in a fresh git repository: comfy-cli packs git's file list, and never runs in the
    checkout."""
    for rel in next_commit_files():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, dest / rel)
    if comfyignore is not None:
        (dest / ".comfyignore").write_text(comfyignore)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


def pack(tree: Path) -> Path:
    """`comfy node pack` in `tree`: the archive the registry receives."""
    proc = subprocess.run([str(COMFY_CLI), "--skip-prompt", "--no-json", "node", "pack"], cwd=tree,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    archive = tree / "node.zip"
    assert proc.returncode == 0 and archive.is_file(), f"comfy node pack failed:\n{proc.stdout}\n{proc.stderr}"
    return archive


def _markdown_links(text: str) -> list[str]:
    """Link and image targets: markdown's [text](target) and HTML's <img src> / <a href> (the thumbnails)."""
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text) + \
        re.findall(r"<(?:img|a)\b[^>]*?\b(?:src|href)=\"([^\"]+)\"", text, re.IGNORECASE)


def _module_file(package_dir: str, level: int, module: str | None) -> list[str]:
    """The archive paths a relative import may resolve to (a module file or a package's __init__.py)."""
    parts = package_dir.split("/") if package_dir else []
    base = parts[: len(parts) - (level - 1)] if level > 1 else parts
    target = "/".join(base + (module.split(".") if module else []))
    prefix = f"{target}/" if target else ""
    return [f"{target}.py", f"{prefix}__init__.py"]


def archive_problems(archive: Path, node_ids: set[str]) -> list[str]:
    """Everything wrong with a registry archive (see the module docstring); empty when it may be published."""
    problems = []
    with zipfile.ZipFile(archive) as z:
        names = {n for n in z.namelist() if not n.endswith("/")}
        read = lambda n: z.read(n).decode("utf-8")  # noqa: E731
        for name in sorted(names):
            parts = name.split("/")
            if parts[0] not in ARCHIVE_TOP_LEVEL:
                problems.append(f"{name}: not part of the pack (.comfyignore should leave it out)")
            if DEVELOPER_FOLDERS & set(parts[:-1]):
                problems.append(f"{name}: a test/benchmark/CI file in the archive")
            if name.endswith(".py"):
                source = read(name)
                problems += [f"{name} {f}" for f in code_findings(source)]
                package_dir = "/".join(parts[:-1])
                for node in ast.walk(ast.parse(source)):
                    if isinstance(node, ast.ImportFrom) and node.level:
                        modules = [node.module] if node.module else [a.name for a in node.names]
                        for m in modules:
                            if node.module is None:  # `from . import x`: x is a module or a name of the package
                                candidates = _module_file(package_dir, node.level, m) + \
                                    _module_file(package_dir, node.level, None)
                            else:
                                candidates = _module_file(package_dir, node.level, m)
                            if not names & set(candidates):
                                problems.append(f"{name} line {node.lineno}: imports {'.' * node.level}{m}, "
                                                f"which is not in the archive")
            elif name.endswith(".js"):
                problems += [f"{name} {f}" for f in js_findings(read(name))]
        required = {"__init__.py", "js/transedit.js", "README.md", "LICENSE", "pyproject.toml", "requirements.txt"}
        required |= {f"js/docs/{node}.md" for node in node_ids}
        for workflow in (n for n in names if n.startswith("workflows/") and n.endswith(".json")):
            required.add(workflow[:-len(".json")] + ".jpg")  # the thumbnail templates browsers show
        problems += [f"{r}: missing from the archive" for r in sorted(required - names)]
        if not any(n.startswith("workflows/") and n.endswith(".json") for n in names):
            problems.append("workflows/: no example workflow in the archive")
        if "README.md" in names:
            for link in _markdown_links(read("README.md")):
                path = link.split("#")[0]
                if path and not re.match(r"[a-z]+:", path) and os.path.normpath(path) not in names:
                    problems.append(f"README.md links to {path}, which is not in the archive")
    return problems


# Loads the extracted folder as ComfyUI's load_custom_node does (spec from the folder's __init__.py under a module
# name of the folder's, registered in sys.modules before running it), in a fresh interpreter where the checkout is
# not importable: the editable install's `transedit` is refused, so the archive must carry all it imports.
_LOADER = r"""
import importlib.abc, importlib.util, json, sys
from pathlib import Path

class NoCheckout(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transedit":
            raise ImportError(f"{name}: the archive imported the checkout's package instead of its own files")
        return None

sys.meta_path.insert(0, NoCheckout())
folder = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location(folder.name, folder / "__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[folder.name] = module
spec.loader.exec_module(module)
print("ARCHIVE-IMPORT " + json.dumps({
    "nodes": sorted(module.NODE_CLASS_MAPPINGS),
    "display_names": sorted(module.NODE_DISPLAY_NAME_MAPPINGS),
    "web_directory": getattr(module, "WEB_DIRECTORY", None),
}))
"""


def import_extracted(folder: Path) -> dict:
    """Import an extracted archive as ComfyUI would; returns its node ids, display names and WEB_DIRECTORY, or fails
    with the interpreter's output."""
    proc = subprocess.run([sys.executable, "-I", "-c", _LOADER, str(folder)], cwd=folder.parent,
                          capture_output=True, text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ARCHIVE-IMPORT ")), None)
    assert proc.returncode == 0 and line, f"the archive does not import:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(line[len("ARCHIVE-IMPORT "):])


def schema_node_ids() -> set[str]:
    return set(json.loads((REPO / "tests" / "node_schema.json").read_text())["nodes"])


def require_comfy_cli():
    if COMFY_CLI.is_file() and os.access(COMFY_CLI, os.X_OK):
        return
    reason = (f"comfy-cli is not installed at {COMFY_CLI} (`./dev.sh validate` installs it into .venv-tools; "
              f"TRANSEDIT_COMFY_CLI names another)")
    if os.environ.get("TRANSEDIT_REQUIRE_REGISTRY_ARCHIVE"):
        pytest.fail(f"{reason}, and TRANSEDIT_REQUIRE_REGISTRY_ARCHIVE is set")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    require_comfy_cli()
    return pack(stage_tree(tmp_path_factory.mktemp("pack-tree")))


# ------------------------------------------------------------------------------------------ the real archive
def test_the_packed_archive_holds_only_the_pack_and_nothing_the_registry_flags(packed):
    with zipfile.ZipFile(packed) as z:
        names = [n for n in z.namelist() if not n.endswith("/")]
    assert archive_problems(packed, schema_node_ids()) == []
    # the .comfyignore does what it says: the developer side is there in the tree and absent from the archive
    assert (REPO / "tests").is_dir() and (REPO / "benchmarks").is_dir()
    assert {n.split("/")[0] for n in names} == ARCHIVE_TOP_LEVEL
    assert len(names) < 150, f"{len(names)} files: the archive grew, check what .comfyignore lets in"


def test_the_packed_archive_imports_as_comfyui_loads_a_custom_node_folder(packed, tmp_path):
    folder = tmp_path / "ComfyUI-TransEdit (registry)"
    with zipfile.ZipFile(packed) as z:
        z.extractall(folder)
    loaded = import_extracted(folder)
    assert set(loaded["nodes"]) == schema_node_ids()
    assert set(loaded["display_names"]) == set(loaded["nodes"])
    assert (folder / loaded["web_directory"] / "transedit.js").is_file()


# ------------------------------------------------------------------------------------------ planted faults
def test_the_scan_flags_process_eval_and_network_code():
    planted = {
        "import subprocess\nsubprocess.run(['ls'])": "imports subprocess",
        "from subprocess import Popen": "imports subprocess",
        "import os\nos.system('ls')": "uses os.system",
        "import os as o\no.popen('ls')": "uses os.popen",
        "from os import execv": "imports os.execv",
        "x = eval('1 + 1')": "calls eval()",
        "exec('print(1)')": "calls exec()",
        "code = compile('1', '<s>', 'eval')": "calls compile()",
        "m = __import__('os')": "calls __import__()",
        "import builtins\nbuiltins.exec('1')": "uses builtins.exec",
        "import urllib.request\nurllib.request.urlopen('http://x')": "imports urllib.request",
        "import urllib\nurllib.request.urlopen('http://x')": "imports urllib.request",
        "from urllib.request import urlopen": "imports urllib.request",
        "import requests\nrequests.get('http://x')": "imports requests",
        "import http.client": "imports http.client",
        "import socket\nsocket.create_connection(('x', 80))": "imports socket",
        "import aiohttp\naiohttp.ClientSession()": "uses aiohttp.ClientSession",
        "from aiohttp import ClientSession": "imports aiohttp.ClientSession",
        "import aiohttp.client": "imports aiohttp.client",
        "def f(x):\n    return eval(x)": "calls eval()",
    }
    for source, expected in planted.items():
        findings = code_findings(source)
        assert any(expected in f for f in findings), (source, findings)


def test_the_scan_passes_what_the_pack_does_on_purpose():
    benign = [
        "model.eval().requires_grad_(False)",  # nn.Module.eval
        "import torch\nf = torch.compile(g)",
        "import re\np = re.compile('x')",
        "def splice(images, compile=False):\n    if compile:\n        return compile(images)",  # a bool input
        "from aiohttp import web\nweb.json_response({})",  # answering on ComfyUI's own server
        "from aiohttp.http_exceptions import HttpProcessingError",
        "import aiohttp  # noqa: F401",
        "from urllib.parse import quote",
        "import os\nos.replace('a', 'b'); os.path.join('a')",
        "from . import rendering\nfrom ..models import registry",
    ]
    for source in benign:
        assert code_findings(source) == [], source
    # and the pack's own code, file by file, as it stands in the checkout
    own = [p for folder in ("nodes", "models") for p in (REPO / folder).rglob("*.py")] + [REPO / "__init__.py"]
    found = {str(p.relative_to(REPO)): code_findings(p.read_text()) for p in own}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_frontend_scan_flags_eval_and_foreign_fetches():
    assert js_findings('const f = new Function("return 1");')
    assert js_findings("eval(text)")
    assert js_findings('fetch("https://example.com/x")')
    assert js_findings("const ws = new WebSocket(url);")
    assert js_findings('api.fetchApi("/transedit/directions"); const HELP = "https://github.com/x";') == []
    assert js_findings((REPO / "js" / "transedit.js").read_text()) == []


def _fake_archive(tmp_path: Path, files: dict[str, str]) -> Path:
    """The pack's real files (what .comfyignore lets in) plus or minus planted ones, zipped as comfy-cli zips."""
    archive = tmp_path / "node.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for rel in next_commit_files():
            if rel.split("/")[0] in ARCHIVE_TOP_LEVEL and rel not in files:
                z.write(REPO / rel, rel)
        for rel, text in files.items():
            if text is not None:
                z.writestr(rel, text)
    return archive


def test_planted_process_call_test_file_and_missing_module_are_caught(tmp_path):
    nodes = schema_node_ids()
    assert archive_problems(_fake_archive(tmp_path, {}), nodes) == []
    planted = {
        "nodes/helper.py": ("import subprocess\nsubprocess.run(['nvidia-smi'])\n", "imports subprocess"),
        "models/expr.py": ("def f(s):\n    return eval(s)\n", "calls eval()"),
        "tests/test_x.py": ("def test_x():\n    pass\n", "not part of the pack"),
        "benchmarks/bench_x.py": ("x = 1\n", "not part of the pack"),
        "nodes/tests/test_y.py": ("x = 1\n", "a test/benchmark/CI file"),
        "dev.sh": ("#!/bin/sh\n", "not part of the pack"),
        "js/extra.js": ("eval(window.x)\n", "evaluates code"),
        # a lazy import (inside a function) of a module the archive does not hold
        "nodes/lazy.py": ("def f():\n    from ..random_weights import tiny\n    return tiny\n",
                          "line 2: imports ..random_weights, which is not in the archive"),
    }
    problems = archive_problems(_fake_archive(tmp_path, {rel: text for rel, (text, _) in planted.items()}), nodes)
    for rel, (_, expected) in planted.items():
        assert any(p.startswith(rel) and expected in p for p in problems), (rel, problems)
    # left out: a module the nodes import, a thumbnail, a help page; the front page linking to a left-out file
    problems = archive_problems(_fake_archive(tmp_path, {
        "nodes/chunks.py": None, "workflows/splice.jpg": None, "js/docs/TransEditSplice.md": None,
        "README.md": "see [the tests](tests/test_package.py) <img src=\"benchmarks/results/x.jpg\">\n"}), nodes)
    assert any("imports .chunks, which is not in the archive" in p for p in problems), problems
    assert "workflows/splice.jpg: missing from the archive" in problems
    assert "js/docs/TransEditSplice.md: missing from the archive" in problems
    assert "README.md links to tests/test_package.py, which is not in the archive" in problems
    assert "README.md links to benchmarks/results/x.jpg, which is not in the archive" in problems


def test_an_archive_missing_an_imported_module_does_not_import(tmp_path):
    folder = tmp_path / "pack"
    with zipfile.ZipFile(_fake_archive(tmp_path, {"nodes/images.py": None})) as z:
        z.extractall(folder)
    with pytest.raises(AssertionError, match="does not import(.|\n)*images"):
        import_extracted(folder)


def test_an_archive_that_needs_the_checkouts_package_does_not_import(tmp_path):
    folder = tmp_path / "pack"
    entry = "import transedit.cli  # planted: reaches outside the archive\n" + (REPO / "__init__.py").read_text()
    with zipfile.ZipFile(_fake_archive(tmp_path, {"__init__.py": entry})) as z:
        z.extractall(folder)
    with pytest.raises(AssertionError, match="imported the checkout's package instead of its own files"):
        import_extracted(folder)


def test_a_comfyignore_that_lets_tests_in_is_caught(tmp_path):
    require_comfy_cli()
    loose = (REPO / ".comfyignore").read_text().replace("!/workflows/", "!/workflows/\n!/tests/")
    assert loose != (REPO / ".comfyignore").read_text()
    archive = pack(stage_tree(tmp_path, comfyignore=loose))
    problems = archive_problems(archive, schema_node_ids())
    assert any(p.startswith("tests/") and "not part of the pack" in p for p in problems), problems
    assert any("tests/" in p and "imports subprocess" in p for p in problems), problems  # the e2e harness
