"""The package is layered by concern, and the layering is a contract: `[tool.importlinter]` in
pyproject.toml lists the packages from the highest layer down (cli, bench, api | repro, evaluation,
training, likelihood, core | data, io, errors, version | watchdog), the layers inside avae.repro,
and forbids import circles between the siblings of any package. import-linter checks it; the tests
here run it on the package, and on copies of the package with an upward import, a circle and an
unplaced module planted, to see each one break the contract.

What import-linter does not check is checked here on the source with `ast`: no avae import inside a
function (where it would hide a circle from a reader, if not from the import graph).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ROOT / "avae"

pytest.importorskip("importlinter", reason="import-linter checks the layering: pip install -e '.[dev]'")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter's contracts (root/pyproject.toml) checked on the avae package under `root`."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = "import sys\nfrom importlinter.cli import lint_imports_command as c\nsys.exit(c())"
    return subprocess.run(
        [sys.executable, "-c", command, "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(PACKAGE_DIR, tmp_path / "avae", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def plant(root: Path, module: str, line: str) -> None:
    path = root / module
    path.write_text(path.read_text() + f"\n{line}\n")


# --- the package ----------------------------------------------------------------------------------


def test_the_layering_contracts_are_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout, result.stdout


def test_a_planted_upward_import_breaks_the_layering(tmp_path):
    root = package_copy(tmp_path)
    plant(root, "avae/core/nets.py", "from avae.training import config  # planted: core -> training")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "avae is layered by concern BROKEN" in result.stdout, result.stdout
    assert "avae.core.nets -> avae.training.config" in result.stdout, result.stdout


def test_a_planted_upward_import_inside_repro_breaks_its_layering(tmp_path):
    root = package_copy(tmp_path)
    plant(root, "avae/repro/paper.py", "from avae.repro import plan  # planted: paper -> plan")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "reproduction is layered" in result.stdout and "BROKEN" in result.stdout, result.stdout
    assert "avae.repro.paper -> avae.repro.plan" in result.stdout, result.stdout


def test_a_planted_circle_inside_a_package_breaks_the_contract(tmp_path):
    root = package_copy(tmp_path)  # runs imports config
    plant(root, "avae/training/config.py", "from avae.training import runs  # planted: a circle")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "no import circles between the modules or packages of any one package BROKEN" in result.stdout


def test_a_module_without_a_layer_breaks_the_contract(tmp_path):
    root = package_copy(tmp_path)
    (root / "avae" / "extra.py").write_text('"""A module nobody placed."""\n')
    result = lint_imports(root)
    assert result.returncode != 0
    assert "avae.extra" in result.stdout, result.stdout


# --- what import-linter does not check --------------------------------------------------------------


def is_avae(dotted: str) -> bool:
    return dotted.split(".")[0] == "avae"


def late_avae_imports(source: str, filename: str = "<source>") -> list[int]:
    """The lines of every avae import inside a function or lambda body (absolute or relative,
    `import avae...`, `from avae... import`, or importlib.import_module("avae...") with a constant)."""
    tree = ast.parse(source, filename=filename)
    lines: list[int] = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import) and any(is_avae(a.name) for a in node.names):
                lines.append(node.lineno)
            elif isinstance(node, ast.ImportFrom) and (node.level or is_avae(node.module or "")):
                lines.append(node.lineno)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, (ast.Attribute, ast.Name))
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and is_avae(str(node.args[0].value))
            ):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_no_avae_import_inside_functions():
    late = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
        for line in late_avae_imports(path.read_text(encoding="utf-8"), str(path))
    ]
    assert late == [], "import avae modules at module level"


def test_the_late_import_check_sees_every_form():
    forms = [
        "import avae.cli",
        "from avae import cli",
        "from avae.cli import main",
        "from . import cli",
        "from .cli import main",
        "import importlib\n    importlib.import_module('avae.cli')",
    ]
    for form in forms:
        assert late_avae_imports(f"def late():\n    {form}\n") != [], form
    assert late_avae_imports("from avae.cli import main\n") == []  # module level is fine
    assert late_avae_imports("def f():\n    import numpy\n") == []  # other packages are fine


def test_every_public_name_is_exported_and_documented():
    import avae

    for name in avae.__all__:
        assert hasattr(avae, name), name
        value = getattr(avae, name)
        if callable(value) and name != "__version__":
            assert (value.__doc__ or "").strip(), f"avae.{name} has no docstring"


def test_the_modules_the_readme_promises_keep_their_names():
    import avae.reproduce
    import avae.train
    from avae.repro.reproduce import reproduce
    from avae.training.train import train

    assert avae.train.train is train and avae.reproduce.reproduce is reproduce
