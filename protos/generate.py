"""Regenerate the Python code (+ .pyi stubs) for every .proto under protos/.

`make protos` runs this with the pinned grpcio-tools and mypy-protobuf; the test suite runs it into a
temporary directory and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent


def proto_files(root: Path = PROTO_ROOT) -> list[Path]:
    return sorted(p for p in root.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with the grpc and mypy plugins into out_dir."""
    import grpc_tools
    from grpc_tools import protoc

    bin_dir = Path(sys.executable).parent
    plugins = {
        name: shutil.which(name, path=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        for name in ("protoc-gen-mypy", "protoc-gen-mypy_grpc")
    }
    missing = [name for name, path in plugins.items() if not path]
    if missing:
        raise SystemExit(f"missing protoc plugins {missing}: install the dev extras (mypy-protobuf)")
    include = Path(grpc_tools.__file__).parent / "_proto"
    rel = [str(p.relative_to(PROTO_ROOT)) for p in proto_files()]
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={plugins['protoc-gen-mypy']}",
        f"--plugin=protoc-gen-mypy_grpc={plugins['protoc-gen-mypy_grpc']}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *rel,
    ]
    cwd = os.getcwd()
    os.chdir(PROTO_ROOT)
    try:
        code = protoc.main(args)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    # Every generated directory is a package.
    for rel_proto in rel:
        pkg = out_dir / Path(rel_proto).parent
        while pkg != out_dir:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent


def generated_files(root: Path) -> dict[str, bytes]:
    """Generated artefacts under root, keyed by relative path."""
    out: dict[str, bytes] = {}
    for path in root.rglob("*"):
        if path.is_file() and (
            path.name.endswith(("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")) or path.name == "__init__.py"
        ):
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PROTO_ROOT)
    args = parser.parse_args()
    generate(args.out)
    print(f"generated {len(proto_files())} protos into {args.out}")


if __name__ == "__main__":
    main()
