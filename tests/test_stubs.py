"""The committed protobuf/gRPC stubs must match protos/exfilguard.proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ["exfilguard_pb2.py", "exfilguard_pb2.pyi", "exfilguard_pb2_grpc.py", "exfilguard_pb2_grpc.pyi"]


def test_stubs_are_fresh(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    (tmp_path / "protos" / "exfilguard.proto").write_bytes(
        (ROOT / "protos" / "exfilguard.proto").read_bytes()
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            "--mypy_grpc_out=.",
            "protos/exfilguard.proto",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    stale = [
        name
        for name in GENERATED
        if (tmp_path / "protos" / name).read_bytes() != (ROOT / "protos" / name).read_bytes()
    ]
    assert not stale, f"stale stubs {stale}: run `make stubs` and commit"
