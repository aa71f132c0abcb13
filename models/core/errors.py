"""Errors shared by every loader in models/ (no ComfyUI imports)."""
from __future__ import annotations

import os


class CheckpointError(ValueError):
    """A weight file that can't be used: the message starts with the file's name and says why."""

    def __init__(self, path, problem: str, hint: str = ""):
        msg = f"{os.path.basename(str(path))}: {problem}"
        if hint:
            msg += f" {hint}"
        super().__init__(msg)
        self.path = str(path)
