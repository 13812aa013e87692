"""The embedded PostgreSQL trusts nobody (issue 13): password (SCRAM) auth, private directories, the
password in $RAPPORT_HOME (0600) and in the DSNs, `rapport db url`, and an upgrade from a trust-auth
data directory."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from services.servicekit import embedded_pg
from services.servicekit.embedded_pg import EmbeddedPostgres, password_path, running_dsn


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    os.environ.setdefault("RAPPORT_PG_FSYNC_OFF", "1")
    running = EmbeddedPostgres(tmp_path / "home")
    try:
        yield running
    finally:
        running.stop()


async def assert_password_required(server: EmbeddedPostgres) -> None:
    dsn = server.dsn()
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT current_user") == "postgres"
    finally:
        await conn.close()
    for wrong in (f"postgresql://postgres@127.0.0.1:{server.port}/rapport",
                  f"postgresql://postgres:guess@127.0.0.1:{server.port}/rapport"):
        with pytest.raises((asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)):
            await asyncpg.connect(wrong)
    rules = [line.split() for line in (server.pgdata / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert rules and {rule[-1] for rule in rules} == {"scram-sha-256"}


async def test_a_new_embedded_database_requires_a_password(server: EmbeddedPostgres) -> None:
    server.start()
    await assert_password_required(server)
    password = password_path(server.home)
    assert mode_of(password) == 0o600 and password.stat().st_uid == os.geteuid()
    assert password.read_text() in server.dsn()
    assert mode_of(server.pgdata) == 0o700 and mode_of(server.socket_dir) == 0o700
    if os.geteuid() == 0:  # the server runs as its own unprivileged user, which owns its directories
        owner = embedded_pg._run_as()
        assert owner is not None
        assert server.pgdata.stat().st_uid == server.socket_dir.stat().st_uid == owner[0] != 0
    assert not list(server.socket_dir.glob("*password*"))  # initdb's copy of the password is gone
    # `rapport db url` prints the DSN of the running embedded database.
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"} | {"RAPPORT_HOME": str(server.home)}
    printed = subprocess.run([sys.executable, "-m", "services.cli", "db", "url"], env=env, capture_output=True,
                             text=True, check=True).stdout.strip()
    assert printed == server.dsn() == running_dsn(server.home)
    server.stop()
    stopped = subprocess.run([sys.executable, "-m", "services.cli", "db", "url"], env=env, capture_output=True,
                             text=True)
    assert stopped.returncode == 1 and "not running" in stopped.stderr


async def test_a_trust_auth_data_directory_is_migrated_to_passwords(server: EmbeddedPostgres) -> None:
    # What earlier versions created: initdb --auth=trust, no password.
    server._owner = embedded_pg._run_as()
    server.home.mkdir(parents=True)
    if server._owner is not None:
        embedded_pg._make_traversable(server.home)
    server._private_dir(server.pgdata)
    server._command("initdb", "-D", str(server.pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                    "--no-instructions")
    assert "trust" in (server.pgdata / "pg_hba.conf").read_text()
    assert not password_path(server.home).exists()
    server.start()
    await assert_password_required(server)
    server.stop()
    server.start()  # and it keeps working after the migration
    await assert_password_required(server)


def test_a_password_protected_data_directory_without_its_password_file_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "pgdata").mkdir(parents=True)
    (home / "pgdata" / "PG_VERSION").write_text("18\n")
    (home / "pgdata" / "pg_hba.conf").write_text("local all all scram-sha-256\n")
    with pytest.raises(RuntimeError, match="pg-password"):
        EmbeddedPostgres(home).start()
