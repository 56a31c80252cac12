"""`fl/` is the pure core: importing every module of it must not import Prefect."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import fl


def test_fl_imports_no_prefect() -> None:
    modules = [m.name for m in pkgutil.walk_packages(fl.__path__, "fl.")]
    assert "fl.registry" in modules and "fl.store.s3" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
