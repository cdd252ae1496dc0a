"""A second ``make run`` in the same clone, while one runs, refuses to start: it would delete the first one's
databases and inbox. The lock dies with the process that holds it, however it ends."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops import devstack
from tests.support.process import ROOT

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ops.devstack import claim
    held = claim(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(600)
""")


def hold(var: Path) -> subprocess.Popen[str]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(var)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n", holder.poll()
    return holder


async def test_a_second_run_refuses_to_start_and_deletes_nothing(tmp_path: Path) -> None:
    (tmp_path / "invitations.db").write_bytes(b"the first run's database")
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "1.eml").write_bytes(b"the first run's inbox")
    holder = hold(tmp_path)
    try:
        with pytest.raises(SystemExit) as refused:
            await devstack.run(argparse.Namespace(no_demo=True, broker="tansu"), tmp_path)
        assert f"already running from this folder (process {holder.pid}" in str(refused.value)
        assert (tmp_path / "invitations.db").read_bytes() == b"the first run's database"
        assert (tmp_path / "mail" / "1.eml").is_file()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # Killed, it left no lock behind: the folder can be claimed again.
    with devstack.claim(tmp_path) as held:
        assert not held.closed
