"""Services some tests need (redis-server, chromium): found, or skipped in one line (CI: fail)."""

from __future__ import annotations

import os
import shutil

__all__ = ["require"]


def require(program: str, install: str) -> str:
    """The path of a service's program; without it, skip in one line (fail when CI is set)."""
    exe = shutil.which(program)
    if exe is not None:
        return exe
    import pytest

    message = f"{program} is not installed: {install}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI installs every service)", pytrace=False)
    pytest.skip(message)
