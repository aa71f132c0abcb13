"""The mutation-score benchmark (benchmarks/mutation_score.py) must make real mutants: each one a change that some
input tells apart from the original, at the operator the issue's slips are made of, never in a docstring, an
f-string or an annotation, and never an operator swallowed by a longer one (`*` inside `**`, `<` inside `<=`)."""
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mutation_score as ms  # noqa: E402

SOURCE = '''"""doc 1 < 2"""
LIMIT = 3


def f(a: int = 1, b: float = 2.0) -> float:
    """also 3 * 4"""
    label = f"{a + 1}"  # f-strings are messages: not mutated
    if a < b and not a == 0:
        return a ** 2 - b // 2
    x = -a
    x += 2 * b
    return x if a in (1, 2) else x % 5 + LIMIT
'''


def _apply(m):
    return SOURCE[:m.start] + m.after + SOURCE[m.end:]


def test_every_mutant_changes_what_the_function_returns(tmp_path):
    mutants = ms.find_mutants(SOURCE)
    kinds = {m.kind for m in mutants}
    assert kinds == {"compare", "operator", "boolean", "not", "sign", "number"}
    inputs = [(a, b) for a in (-3, 0, 1, 2, 4, 7) for b in (-2.0, 0.5, 3.0, 9.0)]

    def run(src):
        path = tmp_path / f"mutant_{len(list(tmp_path.iterdir()))}.py"
        path.write_text(src)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        ns = vars(module)
        out = []
        for a, b in inputs:
            try:
                out.append(ns["f"](a, b))
            except Exception as e:  # noqa: BLE001 - a mutant may divide by zero: that too is a difference
                out.append(type(e).__name__)
        out.append(ns["f"]())  # the defaults
        out.append(ns["f"](2))
        return out

    original = run(SOURCE)
    for m in mutants:
        assert run(_apply(m)) != original, f"mutant {m.key} changes nothing"


def test_mutants_sit_at_the_operators_and_skip_text():
    keys = {m.key for m in ms.find_mutants(SOURCE)}
    assert "8:compare:<->>=" in {f"{m.line}:{m.kind}:{m.before}->{m.after}" for m in ms.find_mutants(SOURCE)}
    assert "9:operator:**->*" in keys and "9:operator://->*" in keys and "9:operator:-->+" in keys
    assert "11:operator:+=->-=" in keys and "12:compare:in->not in" in keys and "10:sign:-a->a" in keys
    assert "2:number:3->4" in keys and "8:boolean:and->or" in keys
    mutated_lines = {m.line for m in ms.find_mutants(SOURCE)}
    assert not mutated_lines & {1, 6, 7}, "docstrings and f-strings are not code to mutate"


def test_the_token_finder_skips_longer_operators_and_comments():
    assert ms._find_token(" ** ", "*") == -1
    assert ms._find_token(" <= ", "<") == -1
    assert ms._find_token(" # a < b\n < ", "<") == 10
    assert ms._find_token(" not in ", "in") == -1
    assert ms._find_token(" (1 + 2) + ", "+") == 9
