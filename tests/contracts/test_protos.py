"""The gRPC contracts: committed generated code is fresh, and buf lint (STANDARD) is clean."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "protos"))
import generate  # noqa: E402  (protos/generate.py)


def test_committed_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    fresh = generate.generated_files(tmp_path)
    committed = {path: data for path, data in generate.generated_files(ROOT / "protos").items() if path in fresh
                 or path.endswith(("_pb2.py", "_pb2_grpc.py", ".pyi"))}
    assert fresh, "protoc generated nothing"
    stale = sorted(path for path in fresh if committed.get(path) != fresh[path])
    extra = sorted(set(committed) - set(fresh))
    assert not stale and not extra, f"run `make protos`: stale {stale}, orphaned {extra}"


def test_every_service_is_importable_as_rapport_domain_v1() -> None:
    from rapport.affinity.v1 import affinity_pb2_grpc
    from rapport.insight.v1 import insight_pb2_grpc
    from rapport.memory.v1 import memory_pb2_grpc
    from rapport.orchestrator.v1 import orchestrator_pb2_grpc

    stubs = [affinity_pb2_grpc.AffinityServiceStub, memory_pb2_grpc.MemoryServiceStub,
             insight_pb2_grpc.InsightServiceStub, orchestrator_pb2_grpc.OrchestratorServiceStub]
    assert all(callable(stub) for stub in stubs)


def test_buf_lint_standard_is_clean() -> None:
    buf = shutil.which("buf", path=str(Path(sys.executable).parent))
    if buf is None:
        pytest.fail("buf (from the buf-bin wheel) is not installed in this environment")
    result = subprocess.run([buf, "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
