"""The install surface: imports, console scripts, and the README's commands in .ci/run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need

ROOT = Path(__file__).resolve().parents[1]


def test_mtbert_import_is_light():
    code = "import sys, mtbert; print(sorted(m for m in ('ray', 'optuna', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mtbert_never_imports_ray():
    offenders = [p.name for p in (ROOT / "mtbert").rglob("*.py") if re.search(r"^\s*(import|from)\s+ray\b", p.read_text(), re.M)]
    assert offenders == []


@pytest.mark.parametrize("script", ["mtbert-train", "mtbert-search"])
def test_console_scripts_have_help(script):
    path = shutil.which(script)
    need(path is not None, f"{script} is not on PATH: install the project with the README's install command")
    out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {script}"), out.stderr


def readme_commands() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    install = re.search(r"<!-- install -->\s*```sh\n(.+?)\n```", text, re.S)
    test = re.search(r"<!-- test -->\s*```sh\n(.+?)\n```", text, re.S)
    assert install and test, "README.md must hold the install and test commands under <!-- install --> / <!-- test -->"
    return install.group(1).strip(), test.group(1).strip()


def test_ci_runs_exactly_the_readme_commands():
    install, test = readme_commands()
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci and test in ci
    assert ci.index(install) < ci.index(test)
