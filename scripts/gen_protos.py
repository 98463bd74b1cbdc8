"""Generate the Python tree `synthaug.v1` (messages, gRPC stubs, .pyi) from protos/.

One command for everyone: `python scripts/gen_protos.py [--out DIR]`. The test suite
regenerates into a temporary folder and fails when the committed tree differs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("synthaug") / "v1"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / PACKAGE).glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc (grpcio-tools) for every proto; returns the generated files."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p.relative_to(PROTO_ROOT)) for p in proto_files()],
    ]
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")
    gen = out_dir / PACKAGE
    (gen / "__init__.py").write_text('"""Generated from protos/synthaug/v1 by scripts/gen_protos.py. Do not edit."""\n')
    (gen / "py.typed").write_text("")
    return sorted(p for p in gen.iterdir() if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT, help="root to write synthaug/v1 under")
    args = parser.parse_args(argv)
    files = generate(args.out)
    sys.stdout.write(f"generated {len(files)} files under {args.out / PACKAGE}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
