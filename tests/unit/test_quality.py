"""The code style the project follows is checked with the tests: ruff and mypy (strict) clean, and the
JSON Schemas in schemas/ match the models."""

from __future__ import annotations

import subprocess
import sys

from tests.support.process import ROOT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff() -> None:
    result = run("ruff", "check", "shared", "services", "ops", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run("mypy", "shared", "services", "ops", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_json_schemas_match_the_models() -> None:
    result = run("shared.schemas")
    assert result.returncode == 0, "schemas/ drifted from the models (make schemas):\n" + result.stdout
