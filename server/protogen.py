"""Generate the Python stubs of proto/asr/v1/asr.proto into server/gen/ (what `make proto` runs).

    python -m server.protogen [--out DIR]

The proto directory is mapped onto the virtual path `server/gen` (protoc's `-Iserver/gen=proto`), so the
generated modules are `server.gen.asr.v1.asr_pb2` and `..._grpc` and import each other by that name; a
plain `-Iproto` would make them `asr.v1.*`, which collides with the `asr` library package. The stubs are
never edited by hand; tests/test_server.py regenerates them into a temporary directory and fails when the
committed ones differ.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository
PROTO_DIR = "proto"  # relative to ROOT
PROTOS = ("asr/v1/asr.proto",)  # relative to PROTO_DIR
PACKAGE = "server/gen"  # where the generated modules live, relative to ROOT
PACKAGE_DIRS = ("", "asr", "asr/v1")  # under PACKAGE; each gets an empty __init__.py


def generate(out: Path = ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) writing `out`/server/gen/...; returns the files written."""
    from grpc_tools import protoc

    out = Path(out).resolve()
    include = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *(f"{PROTO_DIR}/{p}" for p in PROTOS),
    ]
    cwd = Path.cwd()
    try:
        os.chdir(ROOT)  # protoc resolves the proto paths relative to the working directory
        code = protoc.main(args)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    for d in PACKAGE_DIRS:
        (out / PACKAGE / d / "__init__.py").touch()
    return sorted(p for p in (out / PACKAGE).rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write server/gen/ under")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
