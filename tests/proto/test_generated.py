"""The committed generated code is exactly what the .proto compiles to."""
from __future__ import annotations

from pathlib import Path

from proto.generate import PROTO_DIR, generate


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    # Execute
    fresh = generate(tmp_path)
    # Assert
    assert [f.name for f in fresh] == ["federation_pb2.py", "federation_pb2.pyi", "federation_pb2_grpc.py"]
    for path in fresh:
        committed = PROTO_DIR / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `python -m proto.generate` and commit the result")
