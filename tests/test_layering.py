"""House rule 1: the packages stay in their layers (checked in a fresh interpreter per package)."""
from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

FORBIDDEN = {
    # Durable file writes (one atomic writer for every layer): the standard library only.
    "durable": {"numpy", "torch", "h5py", "grpc", "cryptography", "prometheus_client", "pfmh_model", "security",
                "proto", "federation", "coordinator", "participant", "opacus"},
    "pfmh_model": {"grpc", "cryptography", "prometheus_client", "security", "proto", "federation", "coordinator",
                   "participant", "opacus"},
    "security": {"torch", "grpc", "pfmh_model", "proto", "federation", "coordinator", "participant", "opacus"},
    "proto": {"torch", "cryptography", "pfmh_model", "security", "federation", "coordinator", "participant"},
    # The protocol layer both daemons share: the plan, the wire codec, one site's SecAgg round. It sits on
    # proto and security and knows neither daemon, nor torch (the coordinator checks plans without it).
    "federation": {"torch", "opacus", "coordinator", "participant"},
    # The coordinator loads torch only to count a shared model's weights (lazily, in upload_layout),
    # and opacus only when `audit` recomputes epsilon; a prototype-only daemon runs without either.
    "coordinator": {"torch", "opacus", "participant"},
    "participant": {"coordinator"},  # siblings: the ledger records and audit checks live in security
}


# Checked in the source, so an import inside a function (lazy, never run by the test above) counts too:
# the daemons are siblings, and the shared protocol layer knows neither of them nor torch.
NEVER_IMPORTS = {
    "coordinator": {"participant"},
    "participant": {"coordinator"},
    "federation": {"coordinator", "participant", "torch"},
}


def _imported_packages(path) -> set[str]:  # noqa: ANN001 - a pathlib.Path
    """Top-level names of every module ``path`` imports anywhere (module level, functions, TYPE_CHECKING)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


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


@pytest.mark.parametrize("package", sorted(NEVER_IMPORTS))
def test_no_module_imports_a_forbidden_package_even_lazily(package: str) -> None:
    # Prepare
    files = sorted((REPO_ROOT / package).rglob("*.py"))
    # Execute
    offenders = {str(f.relative_to(REPO_ROOT)): sorted(_imported_packages(f) & NEVER_IMPORTS[package]) for f in files}
    # Assert
    assert files, f"no modules found under {package}/"
    bad = {f: names for f, names in offenders.items() if names}
    assert not bad, f"{package} imports what it may not: {bad}"
