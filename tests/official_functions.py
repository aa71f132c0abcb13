"""One helper both golden-regeneration scripts share: running a few functions of an official file without its
module-level imports (video I/O, alignment, editors) and without exec."""
from __future__ import annotations

import ast
import importlib.util
import tempfile
from pathlib import Path


def functions_from_source(path: Path, names, scope: dict):
    """The named top-level functions of an official file, as a module of their own (written to a temporary file and
    imported, so nothing is exec'd here), with `scope` as the globals they look up when called."""
    tree = ast.parse(Path(path).read_text())
    body = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    folder = Path(tempfile.mkdtemp(prefix="official_functions_"))
    module_path = folder / f"{Path(path).stem}_functions.py"
    module_path.write_text(ast.unparse(ast.Module(body=body, type_ignores=[])))
    spec = importlib.util.spec_from_file_location(module_path.stem, module_path)
    module = importlib.util.module_from_spec(spec)
    module.__dict__.update(scope)  # before the definitions run: their annotations name torch
    spec.loader.exec_module(module)
    return module, [node.name for node in body]

