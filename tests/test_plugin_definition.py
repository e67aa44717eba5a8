"""The plugin as Meltano users meet it: hub/tap-marketo-activities.yml (Meltano's
plugin-definition syntax), the repository's meltano.yml and `tap-marketo-activities --about`
say the same thing, and `meltano add --from-ref` takes the hub file in an empty project.
Also the packaging: license, project URLs, console scripts.

The settings are read from `--about --format json`, the tap's own list, never from a copy
kept here. The Meltano test needs .venv-meltano (scripts/pipelines-setup).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tap_marketo_activities.sandbox.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[1]
HUB_FILE = ROOT / "hub" / "tap-marketo-activities.yml"
MELTANO = ROOT / ".venv-meltano" / "bin" / "meltano"
BIN = Path(sys.executable).parent
REPO = "https://github.com/tap-marketo-activities/tap-marketo-activities"
NAME = "tap-marketo-activities"

# The Meltano setting kinds that can carry each JSON schema type. Numbers may be `integer`:
# Meltano 4.4 cannot take a `decimal` from an environment variable (see meltano.yml).
KINDS = {
    "string": {"string", "password", "date_iso8601", "options", "email", "file"},
    "integer": {"integer", "options"},
    "number": {"integer", "decimal"},
    "boolean": {"boolean"},
    "array": {"array"},
    "object": {"object"},
}


@pytest.fixture(scope="module")
def about() -> dict[str, Any]:
    done = subprocess.run([str(BIN / NAME), "--about", "--format", "json"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def hub_definition() -> dict[str, Any]:
    return yaml.safe_load(HUB_FILE.read_text())


def project_extractor(meltano_yml: Path) -> dict[str, Any]:
    project = yaml.safe_load(meltano_yml.read_text())
    return next(p for p in project["plugins"]["extractors"] if p["name"] == NAME)


def repo_extractor() -> dict[str, Any]:
    return project_extractor(ROOT / "meltano.yml")


DEFINITIONS = {"hub": hub_definition, "meltano.yml": repo_extractor}


@pytest.fixture(params=sorted(DEFINITIONS))
def definition(request: pytest.FixtureRequest) -> dict[str, Any]:
    return DEFINITIONS[request.param]()


def json_type(prop: dict[str, Any]) -> str:
    types = prop.get("type", [])
    types = [types] if isinstance(types, str) else types
    return next(t for t in types if t != "null")


def is_sensitive(setting: dict[str, Any]) -> bool:
    # `kind: password` is Meltano's older spelling of `sensitive: true`.
    return bool(setting.get("sensitive")) or setting.get("kind") == "password"


# ---- hub file, meltano.yml and --about agree ---------------------------------------------

def test_declares_every_setting_of_about_and_no_other(definition: dict[str, Any],
                                                      about: dict[str, Any]) -> None:
    names = [s["name"] for s in definition["settings"]]
    assert len(names) == len(set(names)), names
    assert set(names) == set(about["settings"]["properties"])


def test_settings_kinds_fit_the_schema_types(definition: dict[str, Any],
                                              about: dict[str, Any]) -> None:
    properties = about["settings"]["properties"]
    for setting in definition["settings"]:
        prop = properties[setting["name"]]
        assert setting["kind"] in KINDS[json_type(prop)], setting["name"]
        if setting["kind"] == "options":
            assert [o["value"] for o in setting["options"]] == prop["enum"], setting["name"]
        if "value" in setting:
            assert setting["value"] == prop.get("default"), setting["name"]


def test_sensitive_exactly_where_the_tap_says_secret(definition: dict[str, Any],
                                                     about: dict[str, Any]) -> None:
    properties = about["settings"]["properties"]
    sensitive = {s["name"] for s in definition["settings"] if is_sensitive(s)}
    assert sensitive == {n for n, p in properties.items() if p.get("secret")}
    assert "client_secret" in sensitive


def test_every_setting_has_a_label_and_a_description(definition: dict[str, Any]) -> None:
    for setting in definition["settings"]:
        assert setting.get("label", "").strip(), setting["name"]
        assert setting.get("description", "").strip(), setting["name"]


def test_capabilities_and_required_group_are_the_taps(definition: dict[str, Any],
                                                      about: dict[str, Any]) -> None:
    assert set(definition["capabilities"]) == set(about["capabilities"])
    assert "structured-logging" in definition["capabilities"]
    groups = definition["settings_group_validation"]
    assert [set(g) for g in groups] == [set(about["settings"]["required"])]


def test_hub_and_meltano_yml_declare_the_same_settings() -> None:
    hub, local = hub_definition(), repo_extractor()
    assert hub["settings"] == local["settings"]
    for key in ("name", "namespace", "executable"):
        assert hub[key] == local[key], key


def test_hub_metadata_points_at_the_project(about: dict[str, Any]) -> None:
    hub = hub_definition()
    assert hub["name"] == about["name"] == NAME
    assert hub["namespace"] == "tap_marketo_activities"
    for key in ("variant", "label", "description"):
        assert hub.get(key), key
    assert hub["repo"] == REPO
    assert hub["docs"].startswith(REPO)
    assert REPO in hub["pip_url"]
    scripts = {e.name for e in importlib.metadata.entry_points(group="console_scripts")}
    assert hub["executable"] in scripts


# ---- meltano add --from-ref in an empty project ---------------------------------------------

def meltano(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`meltano ARGS` with nothing from the caller's TAP_/TARGET_/MELTANO_ variables."""
    assert MELTANO.exists(), "run `bash scripts/pipelines-setup` (scripts/setup calls it)"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TAP_MARKETO", "TARGET_", "MELTANO_"))}
    env["MELTANO_SEND_ANONYMOUS_USAGE_STATS"] = "false"
    done = subprocess.run([str(MELTANO), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"meltano {' '.join(args)}:\n{done.stderr[-4000:]}"
    return done


def test_meltano_add_from_ref_adds_the_extractor_to_an_empty_project(
        tmp_path: Path, about: dict[str, Any]) -> None:
    meltano(tmp_path, "init", "--no-usage-stats", "project")
    project = tmp_path / "project"
    meltano(project, "add", "--no-install", "--plugin-type", "extractor", NAME,
            "--from-ref", str(HUB_FILE))
    plugins = yaml.safe_load((project / "meltano.yml").read_text())["plugins"]
    assert list(plugins) == ["extractors"], plugins.keys()  # no stray utility
    extractor = project_extractor(project / "meltano.yml")
    assert {s["name"] for s in extractor["settings"]} == set(about["settings"]["properties"])
    assert set(extractor["capabilities"]) == set(about["capabilities"])
    assert {s["name"] for s in extractor["settings"] if is_sensitive(s)} == {"client_secret"}

    listed = meltano(project, "config", "list", "--all", "--plugin-type", "extractor", NAME)
    for name in about["settings"]["properties"]:
        assert f"TAP_MARKETO_ACTIVITIES_{name.upper()}" in listed.stdout, name

    # Installed from this checkout instead of the repository (no network here), the plugin
    # as added runs: Meltano finds its executable and the tap answers --about.
    text = (project / "meltano.yml").read_text().replace(extractor["pip_url"], str(ROOT))
    (project / "meltano.yml").write_text(text)
    meltano(project, "install", "--plugin-type", "extractor", NAME)
    invoked = meltano(project, "invoke", NAME, "--about", "--format", "json")
    assert json.loads(invoked.stdout)["settings"] == about["settings"]


# ---- packaging ------------------------------------------------------------------------------

def test_package_metadata_has_license_and_project_urls() -> None:
    metadata = importlib.metadata.metadata(NAME)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "LICENSE" in (metadata.get_all("License-File") or [])
    assert (ROOT / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= set(urls)
    assert all(u.startswith(REPO) for u in urls.values()), urls
    assert any(c.startswith("Programming Language :: Python :: 3.")
               for c in metadata.get_all("Classifier") or [])


def test_sandbox_console_script_describes_every_option() -> None:
    done = subprocess.run([str(BIN / f"{NAME}-sandbox"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "fake Marketo" in done.stdout
    for action in build_parser()._actions:
        assert action.help, action.option_strings
        for option in action.option_strings:
            assert option in done.stdout, option
    module = subprocess.run([sys.executable, "-m", "tap_marketo_activities.sandbox", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert module.returncode == 0, module.stderr
    assert module.stdout == done.stdout


def test_every_selection_leaves_action_result_out(definition: dict[str, Any]) -> None:
    """actionResult, which Get Lead Activities does not return, keeps a stream on export
    jobs: the Hub definition, meltano.yml and the README's own project leave it out, alike."""
    assert definition["select"] == ["*.*", "!*.actionResult"]
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if " _select " in line)
    assert line.endswith(" _select " + "'" + json.dumps(definition["select"]) + "'"), line
