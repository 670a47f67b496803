"""The command line: --help explains every flag, and every flag has its ORTSERVE_* variable."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from ortserve.settings import ServeSettings, add_serve_arguments, env_name, settings_from_args


def test_help_lists_every_setting_with_its_variable() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ortserve", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for field in fields(ServeSettings):
        assert "--" + field.name.replace("_", "-") in out
        assert env_name(field.name) in out


def _parse(argv: list[str], env: dict[str, str]) -> ServeSettings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser, env)
    return settings_from_args(parser.parse_args(argv))


def test_environment_sets_defaults_and_flags_win() -> None:
    env = {"ORTSERVE_MODEL_REPOSITORY": "/models", "ORTSERVE_GRPC_PORT": "9001"}
    settings = _parse([], env)
    assert settings.model_repository == Path("/models")
    assert settings.grpc_port == 9001
    assert settings.host == "127.0.0.1"
    assert _parse(["--grpc-port", "0"], env).grpc_port == 0


def test_model_repository_is_required() -> None:
    with pytest.raises(SystemExit):
        _parse([], {})


def test_missing_repository_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(tmp_path / "none"),
         "--grpc-port", "0", "--log-format", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "model repository not found" in result.stderr


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    from ortserve.cli import loop_factory

    assert loop_factory("asyncio") is None
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert loop_factory("auto") is None
    with pytest.raises(SystemExit, match="--event-loop uvloop, but uvloop is not installed"):
        loop_factory("uvloop")


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ORTSERVE_MODEL_CONTROL_MODE", "sometimes", "choose from none, poll, explicit"),
        ("ORTSERVE_LOG_FORMAT", "xml", "choose from"),
        ("ORTSERVE_GRPC_PORT", "abc", "is not a valid int"),
        ("ORTSERVE_ENABLE_REPOSITORY_CONTROL", "maybe", "use 1/true/yes/on or 0/false/no/off"),
    ],
)
def test_a_bad_variable_is_refused_like_the_flag(
    variable: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse checks neither type nor choices on a default: the variables must not slip past.
    with pytest.raises(SystemExit) as exit_info:
        _parse([], {"ORTSERVE_MODEL_REPOSITORY": "/models", variable: value})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{variable}={value!r}" in err
    assert says in err


def test_good_variables_still_set_their_flags() -> None:
    env = {
        "ORTSERVE_MODEL_REPOSITORY": "/models",
        "ORTSERVE_MODEL_CONTROL_MODE": "explicit",
        "ORTSERVE_ENABLE_REPOSITORY_CONTROL": "off",
        "ORTSERVE_GRPC_PORT": "9100",
        "ORTSERVE_LOG_LEVEL": "INFO",  # environment files often spell it so
    }
    settings = _parse([], env)
    assert settings.log_level == "info"
    assert settings.model_control_mode == "explicit"
    assert settings.enable_repository_control is False
    assert settings.grpc_port == 9100


def test_version_prints_the_distribution_version() -> None:
    from importlib.metadata import version

    done = subprocess.run([sys.executable, "-m", "ortserve", "--version"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ortserve {version('ortserve')}"


@pytest.mark.parametrize(
    ("argv", "env", "bound"),
    [
        ([], {}, 8002),
        (["--grpc-port", "0"], {}, 0),  # follows a free gRPC port: two daemons never collide
        ([], {"ORTSERVE_GRPC_PORT": "0"}, 0),
        (["--grpc-port", "0", "--metrics-port", "9100"], {}, 9100),  # given: kept
        (["--grpc-port", "0"], {"ORTSERVE_METRICS_PORT": "-1"}, -1),
        (["--grpc-port", "9001"], {}, 8002),
    ],
)
def test_metrics_port_follows_a_free_grpc_port_unless_given(
    argv: list[str], env: dict[str, str], bound: int
) -> None:
    settings = _parse(argv, {"ORTSERVE_MODEL_REPOSITORY": "/models", **env})
    assert settings.metrics_port_to_bind() == bound
