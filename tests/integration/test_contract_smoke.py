"""The shared contract smoke check (../shared/tools/contract_smoke.py), run as the acceptance
checks run it: from the repository root with the project's interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import IN_CI
from tests.support.process import ROOT

SMOKE = ROOT.parent / "shared" / "tools" / "contract_smoke.py"
# The services the tool knows how to feed (it has no sample input for the deliverability service, whose input is
# the other services' notification events).
SERVICES = ["invitations", "expiry", "permissions", "support"]


def test_contract_smoke() -> None:
    if not SMOKE.is_file():
        if IN_CI:
            pytest.fail(f"{SMOKE} is missing: CI runs with ../shared beside the repository")
        pytest.skip(f"{SMOKE} not found (it lives in ../shared, beside the repository)")
    run = subprocess.run([sys.executable, str(SMOKE), *SERVICES], cwd=ROOT, capture_output=True, text=True,
                         timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout
