"""pytest only. The repository root is the pack's package folder (ComfyUI loads its __init__.py by path), cloned
under any name, e.g. the README's ComfyUI-TransEdit, which is no Python identifier. pytest would collect the
root as a Package and import its __init__.py as a top-level module, where the relative imports fail (every
test then errors). The root is collected as a plain directory instead; tests import the pack as `transedit`."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


class _RootIsADirectory:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == ROOT:
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    # registered as a plugin, not as a conftest hook: the root's own collector is chosen by its parent
    # folder's hooks, which a conftest in the root does not reach
    config.pluginmanager.register(_RootIsADirectory(), "transedit-root-is-a-directory")
