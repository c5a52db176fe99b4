"""Regenerate the generated gRPC code from proto/: gpuos/v1/ (gpuos's API),
gpuos/deviceplugin/v1beta1/ (the kubelet's device-plugin API),
gpuos/deviceplugin/podresources/ (the kubelet's PodResources API, v1) and gpuos/dra/ (the kubelet's DRA
plugin API, v1 and v1beta1, and its plugin registration API).

Usage: python tools/gen_proto.py [--out DIR]

The generated code is committed so users need no protoc; tests/test_proto.py fails when it is
stale. Requires grpcio-tools (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


PACKAGES = ("gpuos/v1", "gpuos/deviceplugin/v1beta1", "gpuos/deviceplugin/podresources",
            "gpuos/dra/v1", "gpuos/dra/v1beta1",
            "gpuos/dra/pluginregistration/v1")


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(p for package in PACKAGES for p in PROTO_DIR.glob(f"{package}/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(s.relative_to(PROTO_DIR)) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    files = []
    for package in PACKAGES:
        directory = out / package
        (directory / "__init__.py").write_text('"""Generated gRPC/protobuf code; regenerate with tools/gen_proto.py."""\n')
        files += sorted(directory.iterdir())
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out), file=sys.stderr)


if __name__ == "__main__":
    main()
