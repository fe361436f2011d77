"""The committed generated code is exactly what the .proto compiles to."""
from __future__ import annotations

from pathlib import Path

import pytest

from proto.generate import PROTO_DIR, SOURCES, generate


@pytest.mark.parametrize("source", SOURCES)
def test_generated_code_matches_proto(tmp_path: Path, source: str) -> None:
    # Execute
    fresh = generate(tmp_path, source)
    # Assert
    stem = Path(source).stem
    assert [f.name for f in fresh] == [f"{stem}_pb2.py", f"{stem}_pb2.pyi", f"{stem}_pb2_grpc.py"]
    for path in fresh:
        committed = PROTO_DIR / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is stale: run `python -m proto.generate` and commit the result")
