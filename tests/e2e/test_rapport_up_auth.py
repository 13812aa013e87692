"""`rapport up` with a real JWT secret prints no token (issue 13): only the local mode's token is printed;
a token signed with the real secret is minted only when `rapport token` is asked for one."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import jwt
import pytest

from services.servicekit.embedded_pg import free_port
from tests.e2e.test_rapport_up import _read_lines, _wait_for_line

pytestmark = pytest.mark.e2e

SECRET = "a-real-deployment-secret-0123456789abcdef0123456789"
JWT_PATTERN = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


def test_rapport_up_with_a_jwt_secret_prints_no_token(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENROUTER_API_KEY", "LLM_BASE_URL", "LLM_API_KEY")}
    env.update({"RAPPORT_HOME": str(tmp_path / "home"), "DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1",
                "SUPABASE_JWT_SECRET": SECRET})
    process = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        _wait_for_line(lines, r"Press Ctrl-C to stop", 120, seen)
        banner = "".join(seen)
        assert "Rapport is running." in banner
        assert not JWT_PATTERN.search(banner), banner
        assert "rapport token" in banner
        # The stack works with the deployment's own tokens, and `rapport token` mints one when asked.
        asked = subprocess.run([sys.executable, "-m", "services.cli", "token"], env=env, capture_output=True,
                               text=True, check=True).stdout.strip()
        assert jwt.decode(asked, SECRET, algorithms=["HS256"])["sub"]
        response = httpx.get(f"http://127.0.0.1:{port}/comp/personas", headers={"Authorization": f"Bearer {asked}"},
                             timeout=10)
        assert response.status_code == 200, response.text
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
