"""Fuzz the HTTP API from its own OpenAPI document (schemathesis): no input produces a 5xx."""
from __future__ import annotations

import asyncio
import shutil
import sys
import uuid
from pathlib import Path

from tests.stack import Stack


async def test_no_generated_request_gets_a_server_error(stack: Stack, tmp_path: Path) -> None:
    user = uuid.uuid4()
    await stack.start_chat(user)  # some real data behind the ids
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is a dev dependency"
    process = await asyncio.create_subprocess_exec(
        binary, "run", f"{stack.url}/api-docs/openapi.json", "-H", f"Authorization: Bearer {stack.token(user)}",
        "--checks", "not_a_server_error", "--max-examples", "25", "--phases", "examples,fuzzing",
        "--seed", "20261121", "--max-response-time", "30", cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), timeout=240)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-6000:]
