"""House rule 1: the packages stay in their layers (checked in a fresh interpreter per package)."""
from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

FORBIDDEN = {
    "pfmh_model": {"grpc", "cryptography", "prometheus_client", "security", "proto", "coordinator", "participant",
                   "opacus"},
    "security": {"torch", "grpc", "pfmh_model", "proto", "coordinator", "participant", "opacus"},
    "proto": {"torch", "cryptography", "pfmh_model", "security", "coordinator", "participant"},
    # The coordinator loads torch only to count a shared model's weights (lazily, in upload_layout),
    # and opacus only when `audit` recomputes epsilon; a prototype-only daemon runs without either.
    "coordinator": {"torch", "opacus", "participant"},
    "federation": {"torch", "opacus", "coordinator", "participant"},  # the protocol layer both daemons share
    "participant": {"coordinator"},  # the ledger schema and checks both daemons use live in security
}


def _modules_of(package: str) -> list[str]:
    pkg_dir = REPO_ROOT / package
    names = [package]
    for info in pkgutil.walk_packages([str(pkg_dir)], prefix=f"{package}."):
        names.append(info.name)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_in_layer(package: str) -> None:
    # Prepare: every module of the package, imported in one fresh interpreter.
    modules = _modules_of(package)
    script = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))\n"
    )
    # Execute
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True)
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    # Assert
    leaked = loaded & FORBIDDEN[package]
    assert not leaked, f"{package} pulls in {sorted(leaked)}"
