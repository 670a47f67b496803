"""Regenerate the gRPC/protobuf stubs in client/ortserve_client/proto from protos/*.proto.

    python protos/generate.py          # rewrite the stubs
    python protos/generate.py --check  # exit 1 if the checked-in stubs differ (CI)

Two edits are made to protoc's output, both deliberate:

* The messages are registered in a private descriptor pool (``proto/_pool.py``) instead of
  protobuf's process-wide default pool. ``tritonclient.grpc`` registers the very same
  ``inference.*`` names in the default pool, and a process that imports both would otherwise
  fail with "duplicate symbol". Only the service path and field numbers travel on the wire,
  so the wire format is unchanged.
* Imports between the generated modules are made package-relative.

protoc comes from grpcio-tools (pinned in pyproject.toml); the .pyi stubs from mypy-protobuf.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "client" / "ortserve_client" / "proto"
SOURCES = ("model_config.proto", "grpc_service.proto")
KEEP = ("__init__.py", "_pool.py")

_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL = "_pool.POOL.AddSerializedFile("
_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2)( as \w+)?$", re.MULTILINE)


def _run_protoc(dest: Path) -> None:
    bindir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"--python_out={dest}",
        f"--grpc_python_out={dest}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={dest}",
        f"--mypy_grpc_out={dest}",
        *SOURCES,
    ]
    subprocess.run(cmd, check=True, cwd=PROTOS)


def _rewrite(path: Path) -> None:
    text = path.read_text()
    text = _SIBLING_IMPORT.sub(r"from . import \1\2", text)
    if path.suffix == ".py" and _DEFAULT_POOL in text:
        text = text.replace(_DEFAULT_POOL, _PRIVATE_POOL)
        text = text.replace(
            "from google.protobuf.internal import builder as _builder\n",
            "from google.protobuf.internal import builder as _builder\nfrom . import _pool\n",
        )
    path.write_text(text)


def generate(dest: Path) -> None:
    _run_protoc(dest)
    for path in dest.glob("model_config_pb2_grpc.py*"):
        path.unlink()  # model_config.proto declares no service
    for path in sorted(dest.iterdir()):
        if path.suffix in (".py", ".pyi"):
            _rewrite(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        generated = sorted(p.name for p in fresh.iterdir())
        if args.check:
            current = sorted(p.name for p in OUT.iterdir() if p.name not in KEEP and p.is_file())
            stale = [
                n
                for n in generated
                if not (OUT / n).exists() or not filecmp.cmp(fresh / n, OUT / n, shallow=False)
            ]
            extra = sorted(set(current) - set(generated))
            if stale or extra:
                print(f"stale generated stubs: {stale + extra}; run: python protos/generate.py")
                return 1
            print(f"generated stubs are up to date ({len(generated)} files)")
            return 0
        for name in generated:
            shutil.copyfile(fresh / name, OUT / name)
    print(f"wrote {len(generated)} files to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
