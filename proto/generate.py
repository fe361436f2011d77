"""Regenerate ``federation_pb2*.py`` and ``search_pb2*.py`` from their .proto (run: ``python -m proto.generate``).

The generated code is committed; ``tests/proto/test_generated.py`` regenerates into a temporary
folder and fails if the result differs, so the .proto and the code cannot drift apart. The
grpcio-tools version is pinned in the ``dev`` extra because generated code embeds it.
"""
from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
SOURCES = ("proto/federation.proto", "proto/search.proto")


def generate(out_root: Path, source: str = SOURCES[0]) -> list[Path]:
    """Compile one .proto; outputs land in ``out_root/proto/``. Returns the generated files."""
    from grpc_tools import protoc  # dev-only dependency, imported on use

    (out_root / "proto").mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    code = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR.parent}", f"-I{include}",
                        f"--python_out={out_root}", f"--pyi_out={out_root}", f"--grpc_python_out={out_root}",
                        str(PROTO_DIR.parent / source)])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    return sorted((out_root / "proto").glob(f"{Path(source).stem}_pb2*"))


if __name__ == "__main__":
    files = [f for source in SOURCES for f in generate(PROTO_DIR.parent, source)]
    print("\n".join(str(f) for f in files))
    sys.exit(0)
