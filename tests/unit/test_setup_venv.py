"""scripts/setup-venv.sh installs on a fresh machine as ever, and skips pip when nothing it
depends on changed (scripts/serve.sh used to spend ~6 s reinstalling on every run).

Runs the real script in a copy of the project files, with a stand-in Python whose ``-m venv``
makes the venv and whose ``-m pip`` only records its arguments: no network, no install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import ortserve

#: The checkout the code under test comes from (its scripts go with it).
ROOT = Path(ortserve.__file__).resolve().parents[2]

VENV_PYTHON = """#!/usr/bin/env bash
if [[ $1 == -m && $2 == pip ]]; then
  echo "${*:3}" >>"$PIP_LOG"
  [[ ${FAIL_PIP:-0} != 1 ]]
  exit
fi
exec REAL "$@"
"""

SYSTEM_PYTHON = """#!/usr/bin/env bash
# Only `python3 -m venv DIR` is asked of it: a venv whose python is the stand-in above.
[[ $1 == -m && $2 == venv ]] || exit 9
mkdir -p "$3/bin"
cp "$STAND_IN" "$3/bin/python"
"""


def _project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt", "scripts/setup-venv.sh"):
        shutil.copy2(ROOT / name, project / name)
    stand_in = tmp_path / "venv-python"
    stand_in.write_text(VENV_PYTHON.replace("REAL", sys.executable))
    system = tmp_path / "python3"
    system.write_text(SYSTEM_PYTHON)
    for script in (stand_in, system):
        script.chmod(0o755)
    env = {
        **{k: v for k, v in os.environ.items() if k != "SETUP_VENV_FORCE"},
        "PYTHON": str(system),
        "STAND_IN": str(stand_in),
        "PIP_LOG": str(tmp_path / "pip.log"),
    }
    return project, env


def _setup(project: Path, env: dict[str, str], extras: str, **more: str) -> list[str]:
    """Run the script; the pip commands it ran."""
    log = Path(env["PIP_LOG"])
    log.unlink(missing_ok=True)
    done = subprocess.run(
        ["bash", str(project / "scripts" / "setup-venv.sh"), extras],
        capture_output=True, text=True, timeout=60, env={**env, **more},
    )  # fmt: skip
    assert done.returncode == (1 if more.get("FAIL_PIP") else 0), done.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_a_fresh_machine_installs_and_an_unchanged_one_does_not(tmp_path: Path) -> None:
    project, env = _project(tmp_path)
    install = "install -q -c constraints.txt -e .[{}]"
    # No .venv: created, pip upgraded, the package installed, as before.
    assert _setup(project, env, "server") == [
        "install -q --upgrade pip",
        install.format("server"),
    ]
    assert (project / ".venv" / "bin" / "python").is_file()
    assert _setup(project, env, "server") == []  # nothing changed: no pip at all
    # A new extra installs; then either set alone is there already (pip keeps both).
    assert _setup(project, env, "server,export")[-1] == install.format("server,export")
    assert _setup(project, env, "export") == []
    assert _setup(project, env, "server") == []
    # Anything the install depends on changed: install again.
    with (project / "constraints.txt").open("a") as constraints:
        constraints.write("numpy<3\n")
    assert _setup(project, env, "server")[-1] == install.format("server")
    assert _setup(project, env, "export")[-1] == install.format("export")  # not since the change
    assert _setup(project, env, "server", SETUP_VENV_FORCE="1")[-1] == install.format("server")
    # A failed install leaves no stamp: the next run tries again.
    _setup(project, env, "dev", FAIL_PIP="1")
    assert _setup(project, env, "server")[-1] == install.format("server")
