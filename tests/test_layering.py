"""The arrows between packages point one way: gateway/ may import drivers/ and common/,
drivers/ only common/, common/ neither (so a driver never reaches back into the gateway)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

FORBIDDEN = {"drivers": {"gateway"}, "common": {"gateway", "drivers"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):  # also the imports inside functions
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_runs_back_up(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files
    wrong = {
        str(path.relative_to(REPO)): sorted(imported_packages(path) & FORBIDDEN[package])
        for path in files
        if imported_packages(path) & FORBIDDEN[package]
    }
    assert wrong == {}


def test_the_daemons_path_never_imports_the_simulators_or_the_demo() -> None:
    """The daemon with both features (and the CLI that starts it) loads no simulator and no
    demo module: they are for `eldergate simulate` / `eldergate demo`, the tests and the
    benchmarks only."""
    probe = (
        "import sys\n"
        "import gateway.cli, gateway.daemon, gateway.buttons.feature, gateway.access.feature\n"
        "print(' '.join(sorted(m for m in sys.modules "
        "if m.startswith(('drivers.sim', 'gateway.demo')))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == []


def test_the_core_and_the_buttons_load_no_numpy_and_no_cryptography() -> None:
    """numpy (and the face stack) cost the idle daemon ~20 MiB and cryptography ~7 MiB: only
    face access loads them (the JSON depth check imports numpy on its first deeply bracketed
    payload; sealing imports cryptography when a feature adds its key)."""
    probe = (
        "import sys\n"
        "import gateway.cli, gateway.daemon, gateway.buttons.feature\n"
        "gateway.cli._parser()\n"  # `eldergate run` builds every sub-command's parser
        "print(' '.join(m for m in ('numpy', 'cv2', 'dlib', 'face_recognition', 'cryptography') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == []
