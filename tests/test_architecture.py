"""The package's shape: the layers and the absence of import cycles (import-linter contracts in
pyproject.toml), and no top-level import name besides `phi_lsp`.

import-linter finds a package by walking its folder, and completion/ and review/ live beside
phi_lsp/ in the checkout (setuptools installs them as phi_lsp.completion and phi_lsp.review).
So the check runs on the installed layout, staged in a temporary folder the way a wheel lays it
out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def stage_installed_layout(target: Path) -> Path:
    """phi_lsp/ with completion/ and review/ inside it, as installed; returns the folder."""
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    ignore = shutil.ignore_patterns("__pycache__", "models", "examples")
    shutil.copytree(ROOT / "phi_lsp", target / "phi_lsp", ignore=ignore)
    for package, folder in package_dirs.items():
        shutil.copytree(ROOT / folder, target / Path(*package.split(".")), ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def lint_imports(staged: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"lint-imports is missing ({LINT_IMPORTS}); it comes with the `test` extra")
    env = {**os.environ, "PYTHONPATH": str(staged)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=staged, env=env, capture_output=True, text=True)


def test_layer_contracts_hold(tmp_path):
    result = lint_imports(stage_installed_layout(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_new_cycle_or_an_upward_import_breaks_the_check(tmp_path):
    staged = stage_installed_layout(tmp_path)
    positions = staged / "phi_lsp" / "core" / "positions.py"
    # core.documents imports core.positions: importing it back closes a cycle.
    positions.write_text(positions.read_text() + "\nfrom phi_lsp.core import documents  # noqa\n")
    tokens = staged / "phi_lsp" / "core" / "tokens.py"
    tokens.write_text(tokens.read_text() + "\ndef _late():\n    from phi_lsp.model import backend  # noqa\n")
    result = lint_imports(staged)
    assert result.returncode != 0
    assert "2 broken" in result.stdout, result.stdout
    assert "phi_lsp.core.tokens -> phi_lsp.model.backend" in result.stdout


def test_only_phi_lsp_is_a_top_level_name():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {name.split(".")[0] for name in pyproject["packages"]} == {"phi_lsp"}
    assert all(name.startswith("phi_lsp.") for name in pyproject["package-dir"])
    # Installed, phi_lsp.completion is the checkout's completion/ folder.
    import phi_lsp.completion
    import phi_lsp.review

    assert Path(phi_lsp.completion.__file__).parent == ROOT / "completion"
    assert Path(phi_lsp.review.__file__).parent == ROOT / "review"


def test_no_module_names_the_old_top_level_packages():
    offenders = []
    for folder in ("phi_lsp", "completion", "review", "tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                stripped = line.strip()
                if stripped.startswith(("from completion", "from review", "import completion", "import review")):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {stripped}")
    assert not offenders, "\n".join(offenders)


def test_the_wheel_holds_one_top_level_package_that_imports(tmp_path):
    """A wheel (what `pip install phi-lsp` installs) lays completion/ and review/ inside phi_lsp,
    and the whole package imports from it with nothing of the checkout on the path."""
    import zipfile

    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("phi_lsp-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith("top_level.txt"))
        assert archive.read(top_level).decode().split() == ["phi_lsp"]
        archive.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"phi_lsp"}
    assert "phi_lsp/completion/service.py" in names and "phi_lsp/review/pipeline.py" in names
    check = subprocess.run(
        [sys.executable, "-P", "-c",
         "import sys; sys.path.insert(0, sys.argv[1]); "
         "import phi_lsp.lsp.setup, phi_lsp.cli.main, phi_lsp.completion.service, phi_lsp.review.pipeline; "
         "assert phi_lsp.completion.service.__file__.startswith(sys.argv[1]), phi_lsp.completion.service.__file__", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stderr
