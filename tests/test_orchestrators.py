"""The Airflow DAG and the Dagster job of docs/operations-and-troubleshooting.md, and the run
command given for each, as written, against the sandbox: only the snippets' three constants
(the project's folder, the meltano executable, the environment) are this machine's. Each
loads every record into target-jsonl through `meltano run`.

Needs .venv-airflow and .venv-dagster (scripts/orchestrators-setup, which scripts/setup
calls) and Meltano with its plugins (scripts/pipelines-setup).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_readme import OPERATIONS, assert_loaded_once

from tap_marketo_activities.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW = ROOT / ".venv-airflow" / "bin" / "airflow"
DAGSTER_PYTHON = ROOT / ".venv-dagster" / "bin" / "python"
MELTANO = ROOT / ".venv-meltano" / "bin" / "meltano"
SETUP = "run `bash scripts/setup` (it calls scripts/orchestrators-setup)"
START = "2024-01-01T00:00:00Z"  # meltano.yml's sandbox environment
END = "2024-01-11T00:00:00Z"


def readme_code(section: str, language: str) -> str:
    """The one ```LANGUAGE block of the docs' section headed `section`."""
    text = OPERATIONS.read_text()
    start = text.index(f"\n{section}\n")
    part = text[start:text.index("\n#", start + len(section) + 2)]
    found = re.findall(rf"```{language}\n(.*?)```", part, re.S)
    assert len(found) == 1, f"{len(found)} {language} blocks in {section!r}"
    return str(found[0])


def with_constants(code: str, project: Path) -> str:
    """The snippet with this machine's project, meltano and environment."""
    for name, value in (("PROJECT", str(project)), ("MELTANO", str(MELTANO)),
                        ("ENVIRONMENT", "sandbox")):
        code, found = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M)
        assert found == 1, name
    return code


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.05, data_start=START, data_end=END) as sandbox:
        yield sandbox


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """This repository's Meltano project with its installed plugins, in a folder of the
    test's own: its .meltano/run is not the one tests/test_pipelines.py uses meanwhile."""
    assert MELTANO.exists(), "run `bash scripts/pipelines-setup`"
    folder = tmp_path / "project"
    (folder / ".meltano").mkdir(parents=True)
    shutil.copy(ROOT / "meltano.yml", folder / "meltano.yml")
    for kind in ("extractors", "loaders"):
        (folder / ".meltano" / kind).symlink_to(ROOT / ".meltano" / kind)
    return folder


def pipeline_env(tmp: Path, box: Sandbox, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("TAP_MARKETO", "TARGET_", "MELTANO_", "AIRFLOW", "DAGSTER"))}
    return {**clean, "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
            "MELTANO_DATABASE_URI": f"sqlite:///{tmp}/meltano.db",
            "TAP_MARKETO_ACTIVITIES_BASE_URL": box.base_url,
            "TAP_MARKETO_ACTIVITIES_CLIENT_SECRET": box.config["client_secret"],
            "TARGET_JSONL_DESTINATION_PATH": str(tmp / "jsonl"), **extra}


def assert_everything_loaded(tmp: Path, box: Sandbox) -> None:
    assert_loaded_once(tmp / "jsonl", box, START, END)


def test_the_airflow_dag_loads_every_record(tmp_path: Path, box: Sandbox,
                                            project: Path) -> None:
    assert AIRFLOW.exists(), SETUP
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "marketo_activities.py").write_text(
        with_constants(readme_code("### Airflow", "python"), project))
    env = pipeline_env(tmp_path, box, AIRFLOW_HOME=str(tmp_path / "airflow"),
                       AIRFLOW__CORE__DAGS_FOLDER=str(dags),
                       AIRFLOW__CORE__LOAD_EXAMPLES="False")
    migrated = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True,
                              text=True, timeout=600)
    assert migrated.returncode == 0, (migrated.stdout + migrated.stderr)[-4000:]
    env["PATH"] = os.pathsep.join([str(AIRFLOW.parent), env["PATH"]])
    done = subprocess.run(["bash", "-ec", readme_code("### Airflow", "bash")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "state=success" in done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]
    assert_everything_loaded(tmp_path, box)


DAGSTER_CONCURRENCY = """
from dagster import DagsterInstance

instance = DagsterInstance.get()  # $DAGSTER_HOME/dagster.yaml: the docs', loaded
assert instance.get_concurrency_config().run_queue_config.tag_concurrency_limits == [
    {"key": "pipeline", "value": "marketo", "limit": 1}]
"""


def test_the_dagster_job_loads_every_record(tmp_path: Path, box: Sandbox,
                                            project: Path) -> None:
    assert DAGSTER_PYTHON.exists(), SETUP
    code = tmp_path / "code"
    code.mkdir()
    (code / "marketo_dagster.py").write_text(
        with_constants(readme_code("### Dagster", "python"), project))
    home = tmp_path / "dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(readme_code("### Dagster", "yaml"))
    env = pipeline_env(tmp_path, box, DAGSTER_HOME=str(home))
    loaded = subprocess.run([str(DAGSTER_PYTHON), "-c", DAGSTER_CONCURRENCY], env=env,
                            capture_output=True, text=True, timeout=600)
    assert loaded.returncode == 0, (loaded.stdout + loaded.stderr)[-4000:]
    env["PATH"] = os.pathsep.join([str(DAGSTER_PYTHON.parent), env["PATH"]])
    done = subprocess.run(["bash", "-ec", readme_code("### Dagster", "bash")], cwd=code,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "RUN_SUCCESS" in done.stdout + done.stderr, (done.stdout + done.stderr)[-4000:]
    assert_everything_loaded(tmp_path, box)
