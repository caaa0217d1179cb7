"""The committed stubs under client/sessiond/v1 must match what protos/ generates."""

from __future__ import annotations

import filecmp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("session_pb2.py", "session_pb2.pyi", "session_pb2_grpc.py")


def test_stubs_match_protos(tmp_path: Path) -> None:
    from grpc_tools import protoc

    proto_files = sorted(
        str(path.relative_to(ROOT / "protos"))
        for path in (ROOT / "protos").rglob("*.proto")
    )
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *[str(ROOT / "protos" / name) for name in proto_files],
        ]
    )
    assert status == 0
    for name in GENERATED:
        fresh = tmp_path / "sessiond" / "v1" / name
        committed = ROOT / "client" / "sessiond" / "v1" / name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"{committed} is stale; run `make proto`"
        )
