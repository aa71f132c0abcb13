"""Mutation score: how much of a module's behaviour its tests would notice if it changed.

    python benchmarks/mutation_score.py                       # every module in TARGETS, JSON + markdown
    python benchmarks/mutation_score.py --module models/face/temporal.py --tests tests/test_face_video.py
    python benchmarks/mutation_score.py --module models/face/temporal.py --only 57,58   # mutants on those lines

Each mutant is one small change to the module's source, the kind a slip of the keyboard makes: a comparison flipped
(`<` to `>=`, `==` to `!=`, `in` to `not in`), an arithmetic operator swapped (`+`/`-`, `*`/`/`, `//`/`*`), a
number moved by one (`3` to `4`, `0.5` to `1.5`), a sign dropped (`-x` to `x`), `and`/`or` exchanged, `not`
dropped, `True`/`False` exchanged. The judge tests run once per mutant; a mutant is killed when they fail (or run
past three times their clean duration), and survives when they pass. A survivor is a change no test notices:
either a missing test, or a change that cannot alter behaviour (an equivalent mutant), which
benchmarks/mutation_equivalents.json lists with the reason, mutant by mutant
(`{"models/face/temporal.py": {"<line>:<kind>:<before>-><after>": "why it cannot change behaviour"}}`, keys as printed
by --list).

Why not mutmut: mutmut 3 mutates only code inside functions (the tracking gate's module-level constants, the
very code that failed at a cut, would never be mutated) and maps files to module names from the folder layout,
which this repository's root-is-the-package layout does not follow; mutmut 2 rewrites the checkout in place. Here
the mutants are written into a private copy of the tree (imported as `transedit` through PYTHONPATH), so the
checkout is never touched, and the interpreter with torch imported forks once per mutant to keep each run short.

Not a test and not in CI's time: a full run of TARGETS takes tens of minutes on two cores.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EQUIVALENTS = REPO / "benchmarks" / "mutation_equivalents.json"
RESULTS = REPO / "benchmarks" / "results"

# module -> (the tests that judge it, the functions/classes to mutate or None for the whole module)
TARGETS: dict[str, tuple[list[str], list[str] | None]] = {
    "models/face/temporal.py": (["tests/test_face_video.py"], None),
    "models/face/video.py": (["tests/test_face_video.py"], None),
    "models/core/precision.py": (["tests/test_precision_policy.py", "tests/test_half_precision.py"], None),
    # Edit Studio's service: the gate between previews and the queue
    "nodes/preview_service.py": (["tests/test_edit_studio.py"], None),
    "tests/sync_sentinel.py": (["tests/test_sync_sentinel.py", "tests/test_sync_free.py"], None),
    # the schedule: how many tokens each pass fills and which logits it may draw from
    "models/put/sampling.py": (["tests/test_put_sampling.py",
                                "tests/test_put_parity.py::test_step_counts_follow_the_official_schedules",
                                "tests/test_put_parity.py::test_top_k_filter_counts"],
                               ["official_top_k", "top_k_filter", "step_counts"]),
}

_CMP_FLIP = {ast.Lt: ">=", ast.GtE: "<", ast.Gt: "<=", ast.LtE: ">", ast.Eq: "!=", ast.NotEq: "==",
             ast.Is: "is not", ast.IsNot: "is", ast.In: "not in", ast.NotIn: "in"}
_CMP_TOKEN = {ast.Lt: "<", ast.GtE: ">=", ast.Gt: ">", ast.LtE: "<=", ast.Eq: "==", ast.NotEq: "!=",
              ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in"}
_BIN_SWAP = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "/"), ast.Div: ("/", "*"),
             ast.FloorDiv: ("//", "*"), ast.Mod: ("%", "//"), ast.Pow: ("**", "*"), ast.MatMult: ("@", "*"),
             ast.BitAnd: ("&", "|"), ast.BitOr: ("|", "&"), ast.LShift: ("<<", ">>"), ast.RShift: (">>", "<<")}


@dataclass
class Mutant:
    line: int
    col: int
    kind: str
    before: str
    after: str
    start: int  # offsets into the source text
    end: int

    @property
    def key(self) -> str:
        return f"{self.line}:{self.kind}:{self.before.strip()}->{self.after.strip()}"


def _offsets(source: str) -> list[int]:
    starts, total = [0], 0
    for line in source.splitlines(keepends=True):
        total += len(line)
        starts.append(total)
    return starts


def _skipped_spans(tree: ast.AST) -> list[tuple[int, int, int, int]]:
    """Docstrings, f-strings and type annotations: changes there alter messages or nothing at all."""
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                spans.append(body[0])
        if isinstance(node, ast.JoinedStr):
            spans.append(node)
        if isinstance(node, (ast.arg, ast.AnnAssign)) and getattr(node, "annotation", None) is not None:
            spans.append(node.annotation)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            spans.append(node.returns)
    return [(n.lineno, n.col_offset, n.end_lineno, n.end_col_offset) for n in spans]


def _inside(node: ast.AST, spans) -> bool:
    pos = (node.lineno, node.col_offset)
    return any((a, b) <= pos < (c, d) for a, b, c, d in spans)


def find_mutants(source: str, functions: list[str] | None = None) -> list[Mutant]:
    """Every mutant of `source`, or of the top-level functions/classes named in `functions`."""
    tree = ast.parse(source)
    if functions:
        defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        missing = [f for f in functions if f not in defs]
        if missing:
            raise SystemExit(f"no top-level definition named {missing} in the module")
        ranges = [(defs[f].lineno, defs[f].end_lineno) for f in functions]
        return [m for m in find_mutants(source) if any(a <= m.line <= b for a, b in ranges)]
    starts = _offsets(source)
    lines = source.splitlines()
    skip = _skipped_spans(tree)

    def off(line: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        text = lines[line - 1].encode()[:col].decode(errors="ignore")
        return starts[line - 1] + len(text)

    def no_mutate(line: int) -> bool:
        return "pragma: no mutate" in lines[line - 1]

    found: list[Mutant] = []

    def token_between(left: ast.AST, right: ast.AST, token: str, after: str, kind: str):
        a, b = off(left.end_lineno, left.end_col_offset), off(right.lineno, right.col_offset)
        gap = source[a:b]
        idx = _find_token(gap, token)
        if idx >= 0:
            s = a + idx
            found.append(Mutant(_line_of(starts, s), s - starts[_line_of(starts, s) - 1], kind, token, after, s,
                                s + len(token)))

    for node in ast.walk(tree):
        if not hasattr(node, "lineno") or _inside(node, skip) or no_mutate(node.lineno):
            continue
        if isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                if type(op) in _CMP_FLIP:
                    token_between(left, right, _CMP_TOKEN[type(op)], _CMP_FLIP[type(op)], "compare")
                left = right
        elif isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAP:
            token, after = _BIN_SWAP[type(node.op)]
            token_between(node.left, node.right, token, after, "operator")
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BIN_SWAP:
            token, after = _BIN_SWAP[type(node.op)]
            token_between(node.target, node.value, token + "=", after + "=", "operator")
        elif isinstance(node, ast.BoolOp):
            token, after = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            for left, right in zip(node.values, node.values[1:]):
                token_between(left, right, token, after, "boolean")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not)):
            s, e = off(node.lineno, node.col_offset), off(node.end_lineno, node.end_col_offset)
            o = off(node.operand.lineno, node.operand.col_offset)
            oe = off(node.operand.end_lineno, node.operand.end_col_offset)
            # keep brackets around the operand where the source had them
            found.append(Mutant(node.lineno, node.col_offset, "sign" if isinstance(node.op, ast.USub) else "not",
                                source[s:e], source[o:oe], s, e))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value, bool):
            s, e = off(node.lineno, node.col_offset), off(node.end_lineno, node.end_col_offset)
            found.append(Mutant(node.lineno, node.col_offset, "number", source[s:e], repr(node.value + 1), s, e))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            s, e = off(node.lineno, node.col_offset), off(node.end_lineno, node.end_col_offset)
            found.append(Mutant(node.lineno, node.col_offset, "boolean", source[s:e], str(not node.value), s, e))
    unique = {(m.start, m.end, m.after): m for m in found}
    return sorted(unique.values(), key=lambda m: (m.start, m.kind, m.after))


def _line_of(starts: list[int], offset: int) -> int:
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if starts[mid] <= offset:
            lo = mid
        else:
            hi = mid - 1
    return lo + 1


def _find_token(gap: str, token: str) -> int:
    """The operator's position in the text between two operands, outside comments and brackets' insides."""
    i, depth = 0, 0
    while i < len(gap):
        ch = gap[i]
        if ch == "#":
            nl = gap.find("\n", i)
            i = len(gap) if nl < 0 else nl
            continue
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth <= 0 and gap.startswith(token, i):
            before = gap[i - 1] if i else " "
            after = gap[i + len(token)] if i + len(token) < len(gap) else " "
            word = token[0].isalpha()
            if not word or (not before.isalnum() and not after.isalnum()):
                if token in ("*", "/", "<", ">", "=") or token in ("<<", ">>"):
                    # '*' must not be the first half of '**', '/' of '//', '<' of '<=' or '<<'
                    if after == token[-1] or after == "=" or before == token[0]:
                        i += 1
                        continue
                if token == "in" and gap[max(0, i - 4):i].rstrip().endswith("not"):
                    i += 1
                    continue
                return i
        i += 1
    return -1


def copy_tree(dest: Path) -> Path:
    """The checkout's files (tracked and untracked, not ignored) under dest/transedit; returns that folder."""
    root = dest / "transedit"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    shared = REPO.parent / "shared"
    if shared.is_dir():  # the parity fixtures, where the tests look for them (../shared)
        (dest / "shared").symlink_to(shared)
    return root


def _run_tests(root: Path, tests: list[str], timeout: float) -> tuple[bool, float]:
    """(passed, seconds), in a forked child of this interpreter (torch and pytest already imported)."""
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.chdir(root)
            # the copy, not the checkout, is `transedit` here (and in any process the tests start)
            sys.path.insert(0, str(root.parent))
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root.parent), os.environ.get("PYTHONPATH")]))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest
            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", *tests])
        except BaseException:  # noqa: BLE001 - any failure to run is a kill
            code = 1
        os._exit(int(code))
    deadline = t0 + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) == 0, time.monotonic() - t0
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False, time.monotonic() - t0
        time.sleep(0.02)


def score_module(module: str, tests: list[str], only_lines: set[int] | None = None,
                 equivalents: dict | None = None, functions: list[str] | None = None, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="transedit-mutants-") as tmp:
        root = copy_tree(Path(tmp))
        target = root / module
        clean = target.read_text()
        mutants = [m for m in find_mutants(clean, functions) if not only_lines or m.line in only_lines]
        ok, base_s = _run_tests(root, tests, timeout=1800)
        if not ok:
            raise SystemExit(f"{module}: the judge tests {tests} fail on the unmutated tree; fix them first")
        timeout = 3 * base_s + 15
        log(f"{module}: {len(mutants)} mutants, judge {' '.join(tests)} ({base_s:.1f} s clean)")
        known = (equivalents or {}).get(module, {})
        rows = []
        for i, m in enumerate(mutants, 1):
            target.write_text(clean[:m.start] + m.after + clean[m.end:])
            try:
                compile(target.read_text(), str(target), "exec")
            except SyntaxError:
                rows.append({**_row(m), "status": "invalid"})
                continue
            passed, secs = _run_tests(root, tests, timeout)
            status = "survived" if passed else ("timeout" if secs >= timeout else "killed")
            if status == "survived" and m.key in known:
                status = "equivalent"
            rows.append({**_row(m), "status": status, "seconds": round(secs, 2)})
            if status == "survived":
                log(f"  [{i}/{len(mutants)}] SURVIVED line {m.line}: {m.before.strip()!r} -> {m.after.strip()!r}")
        target.write_text(clean)
    counted = [r for r in rows if r["status"] != "invalid"]
    killed = sum(r["status"] in ("killed", "timeout") for r in counted)
    equivalent = sum(r["status"] == "equivalent" for r in counted)
    judged = len(counted) - equivalent
    result = {"module": module, "tests": tests, "functions": functions, "mutants": len(counted), "killed": killed, "equivalent": equivalent,
              "survived": judged - killed, "score": round(killed / judged, 4) if judged else 1.0,
              "raw_score": round(killed / len(counted), 4) if counted else 1.0, "clean_seconds": round(base_s, 2),
              "rows": rows}
    log(f"{module}: killed {killed}/{judged} ({100 * result['score']:.1f} %), {equivalent} equivalent "
        f"(listed in {EQUIVALENTS.name}), raw {100 * result['raw_score']:.1f} %")
    return result


def _row(m: Mutant) -> dict:
    d = asdict(m)
    d.pop("start"), d.pop("end")
    d["key"] = m.key
    return d


def markdown(results: list[dict]) -> str:
    lines = ["| module (functions) | judge tests | mutants | killed | equivalent | survived | score |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        where = f"`{r['module']}`" + (f" ({', '.join(r['functions'])})" if r.get("functions") else "")
        lines.append(f"| {where} | {', '.join(f'`{t}`' for t in r['tests'])} | {r['mutants']} | "
                     f"{r['killed']} | {r['equivalent']} | {r['survived']} | **{100 * r['score']:.0f} %** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--module", action="append", help="a module path relative to the repository (default: TARGETS)")
    p.add_argument("--tests", nargs="+", help="the judge tests for --module (default: TARGETS' entry)")
    p.add_argument("--functions", help="comma-separated top-level functions/classes to mutate (default: TARGETS' "
                   "entry for a module listed there, else the whole module)")
    p.add_argument("--only", help="comma-separated line numbers: mutate only there")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--out", type=Path, help="JSON results (default: benchmarks/results/mutation.json for a full run)")
    args = p.parse_args(argv)
    modules = args.module or list(TARGETS)
    equivalents = json.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.is_file() else {}
    only = {int(x) for x in args.only.split(",")} if args.only else None
    def functions_of(module):
        if args.functions:
            return args.functions.split(",")
        return TARGETS[module][1] if module in TARGETS else None

    if args.list:
        for module in modules:
            for m in find_mutants((REPO / module).read_text(), functions_of(module)):
                if not only or m.line in only:
                    print(f"{module}:{m.key}")
        return 0
    import pytest  # noqa: F401 - imported once here, inherited by every forked run
    import torch  # noqa: F401
    results = []
    for module in modules:
        tests = args.tests or (TARGETS[module][0] if module in TARGETS else None)
        if not tests:
            p.error(f"{module}: no judge tests; pass --tests")
        results.append(score_module(module, tests, only, equivalents, functions_of(module)))
    out = args.out or (RESULTS / "mutation.json" if not args.module and not only else None)
    if out:
        out.write_text(json.dumps({"results": results}, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(results) + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
