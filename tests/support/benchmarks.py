"""Load a script of benchmarks/ as a module, once per test session, so tests run the very code
that prints the published figures (the test and the table cannot drift apart)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.support.paths import REPO

BENCHMARKS = REPO / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """benchmarks/{name}.py as the module `eldergate_{name}` (cached in sys.modules). The
    benchmarks folder is on sys.path while it loads, for the scripts that import each other."""
    module_name = f"eldergate_{name}"
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses need the module registered
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module
