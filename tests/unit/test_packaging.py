"""Packaging rules: dependency directions, tritonclient side by side, the wheel's contents."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "server" / "ortserve"
CLIENT = ROOT / "client" / "ortserve_client"


def _imports(folder: Path) -> dict[Path, set[str]]:
    return {path: _imports_of(path) for path in folder.rglob("*.py")}


def _imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (absolute imports)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("batching", {"grpc", "onnxruntime", "tokenizers"}),
        ("repository", {"grpc", "onnxruntime", "tokenizers"}),
        ("runtime", {"grpc"}),
        ("text", {"grpc"}),
        ("registry", {"grpc"}),
        ("generation", {"grpc"}),
        # The HTTP front reaches gRPC's status table only through ortserve.protocol.
        ("http", {"grpc", "onnxruntime", "tokenizers"}),
    ],
)
def test_server_layering(package: str, forbidden: set[str]) -> None:
    for path, names in _imports(SERVER / package).items():
        assert not (_top(names) & forbidden), (
            f"{path.relative_to(ROOT)} imports {_top(names) & forbidden}"
        )


#: The data plane: it sees requests through a version's adapter (``ortserve.adapters``), never a
#: token or a task.
DATA_PLANE = ("inference.py", "execution.py", "validation.py", "adapters.py", "batching")


@pytest.mark.parametrize("part", DATA_PLANE)
def test_data_plane_imports_no_text(part: str) -> None:
    path = SERVER / part
    found = _imports(path) if path.is_dir() else {path: _imports_of(path)}
    for module, names in found.items():
        text = {n for n in names if n == "ortserve.text" or n.startswith("ortserve.text.")}
        where = module.relative_to(ROOT)
        assert not text, f"{where} imports {text}"
        assert "tokenizers" not in _top(names), f"{where} imports tokenizers"


def test_only_protocol_and_app_import_grpc() -> None:
    for path, names in _imports(SERVER).items():
        rel = path.relative_to(SERVER)
        if "grpc" in _top(names):
            assert rel.parts[0] == "protocol" or rel.name == "app.py", rel


def _module_level_imports(path: Path) -> set[str]:
    """Imports run when the module is imported (top level, not inside a function)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_cli_imports_the_export_tool_and_only_lazily() -> None:
    for path, names in _imports(SERVER).items():
        rel = path.relative_to(SERVER)
        if rel.parts[0] == "export":
            continue
        uses_export = {
            n for n in names if n == "ortserve.export" or n.startswith("ortserve.export.")
        }
        assert not uses_export or rel.name == "cli.py", f"{rel} imports {uses_export}"
    top = _module_level_imports(SERVER / "cli.py")
    assert not [n for n in top if n.startswith("ortserve.export")], top


def test_serving_never_loads_the_export_tool_or_torch() -> None:
    script = (
        "import sys; import ortserve.app, ortserve.cli; ortserve.cli.build_parser(); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'optimum')"
        " or m.startswith('ortserve.export')]; print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_client_never_imports_the_server() -> None:
    for path, names in _imports(CLIENT).items():
        assert "ortserve" not in _top(names), path


@pytest.mark.parametrize("first", ["tritonclient", "ortserve"])
def test_tritonclient_and_ortserve_import_in_one_process(first: str) -> None:
    imports = [
        "import tritonclient.grpc as tg",
        "from ortserve.protocol import servicer; from ortserve_client.proto import grpc_service_pb2 as pb",
    ]
    if first == "ortserve":
        imports.reverse()
    script = "; ".join(
        [
            *imports,
            "from tritonclient.grpc import service_pb2 as tpb",
            "wire = pb.ModelInferRequest(model_name='m', id='1').SerializeToString()",
            "assert tpb.ModelInferRequest.FromString(wire).model_name == 'm'",
            "assert tg.InferInput('x', [1], 'FP32').name() == 'x'",
            "print('ok')",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_wheel_contains_both_packages(tmp_path: Path) -> None:
    # Build from a copy so that build/ and *.egg-info never land in the checkout.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("server", "client"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("ortserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in [
        "ortserve/app.py",
        "ortserve/export/commands/export.py",
        "ortserve/export/verify/check_texts.txt",
        "ortserve/py.typed",
        "ortserve_client/tensors.py",
        "ortserve_client/py.typed",
        "ortserve_client/proto/grpc_service_pb2.py",
        "ortserve_client/proto/grpc_service_pb2.pyi",
        "ortserve_client/proto/grpc_service_pb2_grpc.py",
        "ortserve_client/proto/_pool.py",
    ]:
        assert expected in names, expected
    assert not any(name.startswith("tests/") for name in names)


def test_generated_stubs_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
