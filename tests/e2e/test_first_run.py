"""What a newcomer sees on a fresh clone: the first screen of `rapport up` is the README's sample (ports
and tokens aside), and `rapport chat` in a real terminal (tmux) shows only prompts and replies."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.chat_client import OFFLINE_NOTE
from services.offline_llm.responder import OFFLINE_MODEL_ID
from services.servicekit.embedded_pg import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README_HOME = "~/.local/share/rapport"  # the default data folder the README shows
READY_LINE = "Press Ctrl-C to stop."
START_TIMEOUT = 120.0
SCREEN_TIMEOUT = 30.0
EXIT_MARK = "rapport chat exited with code "


@dataclass
class FirstRun:
    screen: str  # everything `rapport up` wrote (stdout and stderr) up to READY_LINE
    url: str
    token: str


def wait_for(condition: Callable[[], object], what: str, timeout: float) -> object:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def first_run() -> Iterator[FirstRun]:
    """`rapport up` on a fresh home, as a newcomer starts it: no keys, no database, no LOG_LEVEL,
    no XDG_RUNTIME_DIR (a plain ssh or container shell). The home is not under pytest's temp root:
    another pytest run resets that to mode 0700, which the unprivileged Postgres user cannot cross."""
    scratch = Path(tempfile.mkdtemp(prefix="rapport-first-run-"))
    home = scratch / "home"
    unset = {"DATABASE_URL", "SUPABASE_JWT_SECRET", "SUPABASE_URL", "SUPABASE_JWKS_URL", "OPENROUTER_API_KEY",
             "LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL", "LOG_LEVEL", "XDG_RUNTIME_DIR", "RAPPORT_PORT"}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update({"RAPPORT_HOME": str(home), "RAPPORT_PG_FSYNC_OFF": "1", "PYTHONUNBUFFERED": "1"})
    port = free_port()
    output = home.parent / "up.out"
    with open(output, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--port", str(port)], env=env,
                                   stdout=sink, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        def ready() -> str | None:
            if process.poll() is not None:
                raise AssertionError(f"rapport up exited with {process.returncode}:\n{output.read_text()}")
            text = output.read_text(encoding="utf-8")
            return text if READY_LINE in text else None

        screen = str(wait_for(ready, "rapport up to be ready", START_TIMEOUT))
        screen = screen[: screen.index(READY_LINE) + len(READY_LINE)]
        token = re.search(r"token:\s+(\S+)", screen).group(1)  # type: ignore[union-attr]
        yield FirstRun(screen.replace(str(home), README_HOME), f"http://127.0.0.1:{port}", token)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def without_ports_and_tokens(screen: str) -> list[str]:
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", screen)
    text = re.sub(r"eyJ[\w.-]+…?", "<token>", text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def readme_first_screen() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## What `make run` shows you\n\n```\n(.*?)\n```", readme, re.DOTALL | re.MULTILINE)
    assert section, "README.md has no sample under '## What `make run` shows you'"
    return section.group(1)


def test_the_first_screen_of_rapport_up_is_the_readme_sample(first_run: FirstRun) -> None:
    assert without_ports_and_tokens(first_run.screen) == without_ports_and_tokens(readme_first_screen())
    assert "Warning" not in first_run.screen and " INFO " not in first_run.screen


# ---- rapport chat in a real terminal -------------------------------------------------------------


class Terminal:
    """A tmux session on a private server (its own socket), 200 columns wide."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        if shutil.which("tmux") is None:
            pytest.skip("tmux is not installed (scripts/ensure-debian-tool.sh tmux installs it)")
        self.socket = f"rapport-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
        # The shell writes the command's exit code after it; the pane stays to be read.
        shell = f'env {exports} {shlex.join(command)}; echo "{EXIT_MARK}$?"'
        self._tmux("new-session", "-d", "-x", "200", "-y", "50", "-s", "chat", "-c", str(ROOT),
                   shlex.join(["sh", "-c", shell]), ";", "set-option", "-t", "chat", "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], check=True,
                              capture_output=True, text=True, timeout=10).stdout

    def type_line(self, text: str) -> None:
        self._tmux("send-keys", "-t", "chat", "-l", text)
        self._tmux("send-keys", "-t", "chat", "Enter")

    def lines(self) -> list[str]:
        """The screen as shown (wrapped lines joined), trailing blank lines dropped."""
        screen = [line.rstrip() for line in self._tmux("capture-pane", "-p", "-J", "-t", "chat").splitlines()]
        while screen and not screen[-1]:
            screen.pop()
        return screen

    def exit_status(self) -> int | None:
        """The command's exit code once it has ended (the shell's line after it), else None."""
        ended = [line for line in self.lines() if line.startswith(EXIT_MARK)]
        return int(ended[-1].removeprefix(EXIT_MARK)) if ended else None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def test_rapport_chat_in_a_terminal_shows_only_prompts_and_replies(first_run: FirstRun) -> None:
    said = ["Hey Kai, I just adopted a cat named Miso!", "She keeps stealing my socks."]
    env = {"RAPPORT_TOKEN": first_run.token, "PYTHONUNBUFFERED": "1"}
    terminal = Terminal([sys.executable, "-m", "services.cli", "chat", "--persona", "Kai", "--url", first_run.url],
                        env)
    try:
        wait_for(lambda: terminal.lines()[-1:] == ["you>"], "the first prompt", SCREEN_TIMEOUT)
        for count, message in enumerate(said, start=1):
            terminal.type_line(message)
            wait_for(lambda count=count: sum(line.startswith("Kai> ") for line in terminal.lines()) == count
                     and terminal.lines()[-1] == "you>", f"reply {count}", SCREEN_TIMEOUT)
        screen = terminal.lines()
        terminal.type_line("")  # an empty line quits
        wait_for(lambda: terminal.exit_status() is not None, "rapport chat to exit", SCREEN_TIMEOUT)
        assert terminal.exit_status() == 0
    finally:
        terminal.close()

    headers = {"Authorization": f"Bearer {first_run.token}"}
    with httpx.Client(base_url=first_run.url, headers=headers, timeout=30) as client:
        kai = next(p for p in client.get("/comp/personas").json() if p["name"] == "Kai")
        chat = client.post("/comp/chat/start", json={"persona_id": kai["id"]}).json()
        history = client.get(f"/comp/chat/{chat['session_id']}/history").json()["messages"]
    replies = [m["content"] for m in history if m["role"] == "assistant"]
    assert [m["content"] for m in history if m["role"] == "user"] == said
    assert screen == [
        "New chat with Kai. Empty line or Ctrl-D to quit.",
        f"you> {said[0]}",
        f"Kai> {replies[0]}",
        f"  (answered by {OFFLINE_MODEL_ID}, {OFFLINE_NOTE})",
        f"you> {said[1]}",
        f"Kai> {replies[1]}",
        "you>",
    ]
    assert "kai" not in replies[0].lower() and "Miso" in replies[0]  # the name is the persona's, not the user's
