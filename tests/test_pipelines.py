"""Pipelines as users run them, against the sandbox: Meltano into PostgreSQL and JSONL, a
plain shell pipe, and the Singer SDK's own features (stream maps, flattening, --test,
--about, BATCH, config from the environment).

Needs what scripts/pipelines-setup installs (scripts/setup and scripts/test call it): Meltano
in .venv-meltano, the plugins in .meltano/, and a PostgreSQL server described by
.pipelines.env or PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE. Without them these tests fail.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from conftest import (
    MERGED,
    TapRun,
    all_guids,
    as_sorted_json,
    delivered_merges,
    delivered_rows,
    parse_output,
    run_tap,
)
from test_readme import (
    MELTANO_BIN,
    assert_loaded_once,
    doc_blocks,
    in_background,
    meltano_shell,
    readme_block,
)

from tap_marketo_activities.sandbox import Sandbox
from tap_marketo_activities.sandbox.__main__ import ACTIVITIES_PER_DAY

ROOT = Path(__file__).resolve().parents[1]
MELTANO = ROOT / ".venv-meltano" / "bin" / "meltano"
LOADERS = ROOT / ".meltano" / "loaders"
TARGET_JSONL = LOADERS / "target-jsonl" / "venv" / "bin" / "target-jsonl"
TARGET_POSTGRES = LOADERS / "target-postgres" / "venv" / "bin" / "target-postgres"
TAP = Path(sys.executable).parent / "tap-marketo-activities"
SETUP = "run `bash scripts/pipelines-setup` (scripts/setup and scripts/test call it)"

START = "2024-01-01T00:00:00Z"
MID = "2024-01-07T00:00:00Z"  # the first run's end_date, the second run's bookmark
END = "2024-01-11T00:00:00Z"
WINDOW_DAYS = 5
FAST = {"window_days": WINDOW_DAYS, "poll_interval_seconds": 0.1, "max_retry_seconds": 20}
BASE = ("marketoGUID", "leadId", "activityDate", "activityTypeId", "campaignId",
        "primaryAttributeValueId", "primaryAttributeValue", "attributes", "actionResult")
TAP_SETTINGS = ("client_id", "client_secret", "base_url", "start_date", "end_date",
                "window_days", "activity_type_ids", "poll_interval_seconds",
                "job_timeout_seconds", "max_jobs_in_queue", "max_export_mb_per_day",
                "api_limit_share", "request_timeout_seconds", "max_retry_seconds",
                "max_job_attempts", "export_format", "primary_attribute_filters",
                "raw_files_dir", "raw_files_column_header_names")


# ---- the pieces: sandbox, catalog, PostgreSQL, Meltano -------------------------------------

@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(job_latency=0.05, data_start=START, data_end=END) as sandbox:
        yield sandbox


def bulk_type_ids(box: Sandbox) -> list[int]:
    """Every type but 37 Delete Lead, which comes from another endpoint (test_options.py)."""
    return sorted(t["id"] for t in box.activity_types() if t["id"] != 37)


def tap_config(box: Sandbox, end: str = END, **overrides: Any) -> dict[str, Any]:
    return {**box.config, "start_date": START, "end_date": end, **FAST,
            "activity_type_ids": bulk_type_ids(box), **overrides}


@pytest.fixture(scope="module")
def catalog(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = run_tap(tmp_path_factory.mktemp("discover"), tap_config(box), extra=("--discover",))
    assert run.returncode == 0, run.stderr
    return run.messages[0]


@dataclass
class Streams:
    """What the catalog says about each stream, to predict records from the sandbox's."""

    by_type: dict[int, str]
    schemas: dict[str, dict[str, Any]]

    def columns(self, stream: str) -> dict[str, dict[str, Any]]:
        return self.schemas[stream]["properties"]

    def expected_record(self, activity: dict[str, Any]) -> dict[str, Any]:
        """The record the tap must write for a sandbox activity: its own fields plus one
        typed column per attribute (`title` = Marketo's display name)."""
        stream = self.by_type[activity["activityTypeId"]]
        # actionResult is not selected by default (meltano.yml's `select`, discovery).
        record = {k: activity[k] for k in BASE if k != "actionResult"}
        for column, prop in self.columns(stream).items():
            if "title" in prop:
                value = (activity["attributes"] or {}).get(prop["title"])
                if value is not None and prop["type"][0] == "string" and \
                        not isinstance(value, str):
                    value = json.dumps(value)
                record[column] = value
        return record

    def counts(self, activities: list[dict[str, Any]]) -> Counter[str]:
        return Counter(self.by_type[a["activityTypeId"]] for a in activities)

    @property
    def every(self) -> set[str]:
        """Every stream: one per activity type, and merged_leads (made of type 32's rows)."""
        return set(self.schemas) | {MERGED}


@pytest.fixture(scope="module")
def streams(catalog: dict[str, Any]) -> Streams:
    assert MERGED in {e["stream"] for e in catalog["streams"]}  # type 32 is in the sandbox
    return Streams(
        {e["schema"]["properties"]["activityTypeId"]["enum"][0]: e["stream"]
         for e in catalog["streams"] if e["stream"] != MERGED},
        {e["stream"]: e["schema"] for e in catalog["streams"] if e["stream"] != MERGED},
    )


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} is missing: {SETUP}.")
    return path


def psql_binary() -> str:
    found = shutil.which("psql") or next(iter(sorted(glob("/usr/lib/postgresql/*/bin/psql"))),
                                         None)
    if not found:
        pytest.fail(f"PostgreSQL's psql is not installed: {SETUP}.")
    return found


@dataclass
class Postgres:
    """One throw-away database on the test server, queried through psql."""

    conn: dict[str, str]  # PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
    psql: str

    def run_sql(self, query: str, database: str | None = None) -> list[list[str]]:
        env = {**os.environ, **self.conn}
        if database:
            env["PGDATABASE"] = database
        done = subprocess.run([self.psql, "-X", "-v", "ON_ERROR_STOP=1", "-q", "--csv", "-t",
                               "-c", query], env=env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, f"psql failed: {done.stderr}\n{query}"
        return list(csv.reader(io.StringIO(done.stdout)))

    def rows(self, schema: str, table: str) -> list[dict[str, Any]]:
        return [json.loads(r[0]) for r in self.run_sql(
            f'SELECT row_to_json(t) FROM "{schema}"."{table}" t')]

    def tables(self, schema: str) -> set[str]:
        return {r[0] for r in self.run_sql(
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = '{schema}'")}

    def counts(self, schema: str) -> Counter[str]:
        return Counter({t: int(self.run_sql(f'SELECT count(*) FROM "{schema}"."{t}"')[0][0])
                        for t in self.tables(schema)})

    def target_env(self, schema: str) -> dict[str, str]:
        return {"TARGET_POSTGRES_HOST": self.conn["PGHOST"],
                "TARGET_POSTGRES_PORT": self.conn["PGPORT"],
                "TARGET_POSTGRES_USER": self.conn["PGUSER"],
                "TARGET_POSTGRES_PASSWORD": self.conn["PGPASSWORD"],
                "TARGET_POSTGRES_DATABASE": self.conn["PGDATABASE"],
                "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema}

    def target_config(self, schema: str) -> dict[str, Any]:
        return {"host": self.conn["PGHOST"], "port": int(self.conn["PGPORT"]),
                "user": self.conn["PGUSER"], "password": self.conn["PGPASSWORD"],
                "database": self.conn["PGDATABASE"], "default_target_schema": schema,
                "add_record_metadata": False, "activate_version": False}


def connection_settings() -> dict[str, str]:
    names = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")
    settings: dict[str, str] = {}
    env_file = ROOT / ".pipelines.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() in names:
                settings[name.strip()] = value.strip()
    settings.update({n: os.environ[n] for n in names if os.environ.get(n)})
    missing = [n for n in names if n not in settings]
    if missing:
        pytest.fail(f"No PostgreSQL for the pipeline tests ({', '.join(missing)} unset, "
                    f"no .pipelines.env): {SETUP}.")
    return settings


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    """A fresh database per module, dropped at the end."""
    admin = Postgres(connection_settings(), psql_binary())
    env = {**os.environ, **admin.conn}
    ready = subprocess.run([admin.psql, "-X", "-c", "SELECT 1"], env=env, capture_output=True,
                           text=True, timeout=30)
    if ready.returncode != 0:
        pytest.fail(f"PostgreSQL at {admin.conn['PGHOST']}:{admin.conn['PGPORT']} does not "
                    f"answer ({ready.stderr.strip()}): {SETUP}.")
    database = f"tap_pipelines_{uuid.uuid4().hex[:10]}"
    admin.run_sql(f"CREATE DATABASE {database}")
    try:
        yield Postgres({**admin.conn, "PGDATABASE": database}, admin.psql)
    finally:
        admin.run_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def meltano(tmp: Path, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`meltano ARGS` in the repository's project, with a system database (and so state) of
    its own in `tmp`, and nothing from the caller's TAP_/TARGET_/MELTANO_ variables."""
    require(MELTANO)
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("TAP_MARKETO", "TARGET_", "MELTANO_"))}
    tmp.mkdir(parents=True, exist_ok=True)
    clean.update({"MELTANO_DATABASE_URI": f"sqlite:///{tmp}/meltano.db",
                  "MELTANO_SEND_ANONYMOUS_USAGE_STATS": "false",
                  "MELTANO_ENVIRONMENT": "sandbox", **(env or {})})
    return subprocess.run([str(MELTANO), *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=timeout)


def tap_env(box: Sandbox, end: str) -> dict[str, str]:
    """The sandbox's config as Meltano takes it: environment variables over meltano.yml."""
    return {"TAP_MARKETO_ACTIVITIES_BASE_URL": box.base_url,
            "TAP_MARKETO_ACTIVITIES_CLIENT_ID": box.config["client_id"],
            "TAP_MARKETO_ACTIVITIES_CLIENT_SECRET": box.config["client_secret"],
            "TAP_MARKETO_ACTIVITIES_START_DATE": START,
            "TAP_MARKETO_ACTIVITIES_END_DATE": end,
            "TAP_MARKETO_ACTIVITIES_WINDOW_DAYS": str(WINDOW_DAYS),
            "TAP_MARKETO_ACTIVITIES_ACTIVITY_TYPE_IDS": json.dumps(bulk_type_ids(box)),
            "TAP_MARKETO_ACTIVITIES_MAX_RETRY_SECONDS": "20"}  # poll: meltano.yml's 0.2


def meltano_run(tmp: Path, target: str, env: dict[str, str]) -> None:
    done = meltano(tmp, "run", "tap-marketo-activities", target, env=env)
    assert done.returncode == 0, f"meltano run failed:\n{done.stderr[-6000:]}"


def meltano_state(tmp: Path, state_id: str) -> dict[str, Any]:
    done = meltano(tmp, "state", "get", state_id)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def bookmarks(state: dict[str, Any]) -> dict[str, str]:
    return {s: b.get("replication_key_value") for s, b in state["bookmarks"].items()}


def utc(text: str) -> dt.datetime:
    """A timestamp as written by the tap (`...Z`) or read back from PostgreSQL (naive)."""
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


# ---- Meltano into PostgreSQL ----------------------------------------------------------------

PG_TYPES = {"integer": {"bigint"}, "boolean": {"boolean"}, "number": {"numeric"},
            "object": {"jsonb", "json"}, "string": {"text", "character varying"},
            "date-time": {"timestamp without time zone", "timestamp with time zone"},
            "date": {"date"}}


def pg_type_expected(prop: dict[str, Any]) -> set[str]:
    kind = next(t for t in prop["type"] if t != "null") if isinstance(prop["type"], list) \
        else prop["type"]
    return PG_TYPES[prop.get("format") or kind] if kind == "string" else PG_TYPES[kind]


def pg_value(value: Any, prop: dict[str, Any]) -> Any:
    """A record value as row_to_json gives it back from its typed column."""
    if value is None:
        return None
    if prop.get("format") == "date-time":
        return utc(value)
    return value


@pytest.fixture(scope="module")
def postgres_runs(box: Sandbox, pg: Postgres, streams: Streams,
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two `meltano run`s into PostgreSQL: START..MID, then on from the bookmark to END.

    target-postgres upserts on the key, which would hide a record delivered twice: a
    loader-side stream map drops the key properties, so that every row is appended."""
    tmp = tmp_path_factory.mktemp("meltano-postgres")
    no_keys: dict[str, dict[str, list[str]]] = {stream: {"__key_properties__": []}
                                                for stream in streams.every}
    env = {**pg.target_env("marketo"), "TARGET_POSTGRES_STREAM_MAPS": json.dumps(no_keys)}
    meltano_run(tmp, "target-postgres", {**tap_env(box, MID), **env})
    first = {"counts": pg.counts("marketo"),
             "state": meltano_state(tmp, "sandbox:tap-marketo-activities-to-target-postgres")}
    meltano_run(tmp, "target-postgres", {**tap_env(box, END), **env})
    second = {"counts": pg.counts("marketo"),
              "state": meltano_state(tmp, "sandbox:tap-marketo-activities-to-target-postgres")}
    return {"first": first, "second": second}


def test_meltano_postgres_one_table_per_stream_with_expected_counts(
        postgres_runs: dict[str, Any], box: Sandbox, streams: Streams) -> None:
    first = postgres_runs["first"]["counts"]
    assert set(first) == streams.every
    expected = streams.counts(delivered_rows(box, START, MID))
    assert sum(expected.values()) > 200
    expected[MERGED] = len(delivered_merges(box, START, MID))
    assert expected[MERGED] > 0
    assert {t: first[t] for t in expected} == dict(expected)
    assert all(first[t] == 0 for t in set(first) - set(expected))


def test_meltano_postgres_columns_are_typed(postgres_runs: dict[str, Any], pg: Postgres,
                                            streams: Streams) -> None:
    columns: dict[tuple[str, str], str] = {
        (t, c): d for t, c, d in pg.run_sql(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'marketo'")}
    checked: Counter[str] = Counter()
    for stream, schema in streams.schemas.items():
        for column, prop in schema["properties"].items():
            if column == "actionResult":  # not selected (meltano.yml): no column
                assert (stream, column) not in columns
                continue
            assert columns[(stream, column)] in pg_type_expected(prop), (stream, column, prop)
            checked[columns[(stream, column)]] += 1
    visit = "activities_visit_webpage"
    assert columns[(visit, "activityDate")] == "timestamp without time zone"
    assert columns[(visit, "leadId")] == "bigint"
    assert columns[(visit, "personalized_url")] == "boolean"
    assert columns[(visit, "attributes")] == "jsonb"
    assert {"bigint", "boolean", "jsonb", "numeric", "date", "text"} <= set(checked)


def test_design_sql_maps_activities_of_merged_away_leads_to_the_lead_kept(
        postgres_runs: dict[str, Any], pg: Postgres, box: Sandbox) -> None:
    design = (ROOT / "docs" / "design.md").read_text()
    sql = next(b for b in design.split("```sql\n")[1:] if "lead_kept" in b).split("```")[0]
    pg.run_sql("DROP VIEW IF EXISTS marketo.visits_by_lead_kept, marketo.lead_kept; " + sql)
    merges = box.expected_merged_leads(START, END)
    latest = {p["mergedLeadId"]: p["leadId"] for p in sorted(merges,
                                                            key=lambda p: p["activityDate"])
              if p["activityDate"] < END}
    rows = pg.run_sql("SELECT merged_lead_id, kept_lead_id FROM marketo.lead_kept")
    assert {int(m): int(k) for m, k in rows} == latest
    moved = pg.run_sql('SELECT count(*) FROM marketo.visits_by_lead_kept '
                       'WHERE kept_lead_id <> "leadId"')
    visits = [a for a in delivered_rows(box, START, END, type_ids=[1])]
    assert int(moved[0][0]) == sum(1 for a in visits if a["leadId"] in latest)
    total = pg.run_sql("SELECT count(*) FROM marketo.visits_by_lead_kept")
    assert int(total[0][0]) == len(visits)


def test_meltano_postgres_second_run_is_incremental(
        postgres_runs: dict[str, Any], pg: Postgres, box: Sandbox, streams: Streams) -> None:
    # Without a key, a record delivered twice is a second row: the check below is live.
    assert pg.run_sql("SELECT count(*) FROM information_schema.table_constraints WHERE "
                      "table_schema = 'marketo' AND constraint_type = 'PRIMARY KEY'") == [["0"]]
    all_expected = {a["marketoGUID"]: a for a in delivered_rows(box, START, END)}
    at_bookmark = {g for g, a in all_expected.items() if a["activityDate"] == MID}
    assert at_bookmark, "the sandbox should have an activity on the bookmark second"
    seen: dict[str, Counter[str]] = {}
    for stream in streams.schemas:
        rows = pg.rows("marketo", stream)
        seen[stream] = Counter(r["marketoGUID"] for r in rows)
        props = streams.columns(stream)
        for row in rows:
            want = streams.expected_record(all_expected[row["marketoGUID"]])
            assert {c: pg_value(v, props[c]) for c, v in want.items()} == \
                   {c: pg_value(row[c], props[c]) for c in want}, row["marketoGUID"]
    everything = sum(seen.values(), Counter())
    assert set(everything) == set(all_expected)
    # The rows of the bookmark's second come with the second run's first window, once.
    assert max(everything.values()) == 1
    merges = delivered_merges(box, START, END)
    assert as_sorted_json([merge_from_pg(r) for r in pg.rows("marketo", MERGED)]) == \
           as_sorted_json(merges)
    counts = postgres_runs["second"]["counts"]
    assert {s: counts[s] for s in streams.schemas} == \
           {s: sum(c.values()) for s, c in seen.items()}
    assert counts[MERGED] == len(merges)
    assert sum(counts.values()) == len(all_expected) + len(merges)


def merge_from_pg(row: dict[str, Any]) -> dict[str, Any]:
    """A merged_leads row as the tap wrote it: its activityDate comes back naive."""
    return {**row, "activityDate": utc(row["activityDate"]).strftime("%Y-%m-%dT%H:%M:%SZ")}


def test_meltano_postgres_state_is_at_the_bookmark(postgres_runs: dict[str, Any],
                                                   streams: Streams) -> None:
    first = bookmarks(postgres_runs["first"]["state"]["singer_state"])
    second = bookmarks(postgres_runs["second"]["state"]["singer_state"])
    assert first == dict.fromkeys(streams.every, MID)
    assert second == dict.fromkeys(streams.every, END)


# ---- Meltano into JSONL, and a plain pipe ------------------------------------------------------

def read_jsonl_folder(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()]
            for p in sorted(folder.glob("*.jsonl"))}


def assert_exactly(records: dict[str, list[dict[str, Any]]], expected: list[dict[str, Any]],
                   streams: Streams) -> None:
    """Each expected activity once, in its stream, every value equal."""
    records = {s: rows for s, rows in records.items() if s != MERGED}  # tests of its own
    got = Counter(r["marketoGUID"] for rows in records.values() for r in rows)
    assert [g for g, n in got.items() if n > 1] == []
    assert set(got) == {a["marketoGUID"] for a in expected}
    by_guid = {r["marketoGUID"]: (s, r) for s, rows in records.items() for r in rows}
    for activity in expected:
        stream, record = by_guid[activity["marketoGUID"]]
        assert stream == streams.by_type[activity["activityTypeId"]]
        assert record == streams.expected_record(activity)


def test_meltano_jsonl_delivers_every_activity_once(box: Sandbox, streams: Streams,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    meltano_run(tmp_path, "target-jsonl",
                {**tap_env(box, MID), "TARGET_JSONL_DESTINATION_PATH": str(out)})
    expected = delivered_rows(box, START, MID)
    records = read_jsonl_folder(out)
    assert_exactly(records, expected, streams)
    assert as_sorted_json(records[MERGED]) == as_sorted_json(delivered_merges(box, START, MID))
    state = meltano_state(tmp_path, "sandbox:tap-marketo-activities-to-target-jsonl")
    assert bookmarks(state["singer_state"]) == dict.fromkeys(streams.every, MID)


def test_shell_pipe_into_target_jsonl(box: Sandbox, streams: Streams, tmp_path: Path) -> None:
    require(TARGET_JSONL)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(tap_config(box)))
    target = tmp_path / "t.json"
    target.write_text(json.dumps({"destination_path": str(tmp_path / "out"),
                                  "do_timestamp_file": False}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    command = (f"set -o pipefail; {shlex.quote(str(TAP))} --config {shlex.quote(str(config))}"
               f" | {shlex.quote(str(TARGET_JSONL))} --config {shlex.quote(str(target))}")
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    counts = {s: len(rows) for s, rows in read_jsonl_folder(tmp_path / "out").items()}
    assert counts == {**streams.counts(delivered_rows(box, START, END)),
                      MERGED: len(delivered_merges(box, START, END))}
    final_state = json.loads(done.stdout.strip().splitlines()[-1])
    assert bookmarks(final_state) == dict.fromkeys(streams.every, END)


# ---- the SDK's own features -------------------------------------------------------------------

def run_ok(tmp: Path, config: dict[str, Any], *extra: str) -> TapRun:
    run = run_tap(tmp, config, extra=extra)
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def test_stream_maps_drop_a_column_alias_a_stream_and_drop_a_stream(
        box: Sandbox, streams: Streams, tmp_path: Path) -> None:
    maps = {"activities_visit_webpage": {"__alias__": "webpage_visits", "user_agent": None},
            "activities_click_link": None,
            MERGED: {"keptLeadId": "leadId", "leadId": None}}  # its records are mapped too
    run = run_ok(tmp_path, tap_config(box, end=MID, stream_maps=maps))
    schemas = {m["stream"]: m["schema"] for m in run.messages if m["type"] == "SCHEMA"}
    assert "webpage_visits" in schemas
    assert not {"activities_visit_webpage", "activities_click_link"} & set(schemas)
    assert "user_agent" not in schemas["webpage_visits"]["properties"]
    assert "webpage_url" in schemas["webpage_visits"]["properties"]
    expected = {a["marketoGUID"]: a for a in delivered_rows(box, START, MID)}
    visits = run.records["webpage_visits"]
    visit_type = next(t for t, s in streams.by_type.items() if s == "activities_visit_webpage")
    assert len(visits) == sum(1 for a in expected.values() if a["activityTypeId"] == visit_type)
    for record in visits:
        want = streams.expected_record(expected[record["marketoGUID"]])
        assert record == {k: v for k, v in want.items() if k != "user_agent"}
    assert "activities_click_link" not in run.records
    assert set(run.records) == streams.every - {
        "activities_visit_webpage", "activities_click_link"} | {"webpage_visits"}
    merges = [{**{k: v for k, v in p.items() if k != "leadId"}, "keptLeadId": p["leadId"]}
              for p in delivered_merges(box, START, MID)]
    assert as_sorted_json(run.records[MERGED]) == as_sorted_json(merges)


def test_flattening_turns_the_attributes_object_into_json_text(
        box: Sandbox, streams: Streams, tmp_path: Path) -> None:
    run = run_ok(tmp_path, tap_config(box, end=MID, flattening_enabled=True,
                                      flattening_max_depth=1))
    schemas = {m["stream"]: m["schema"] for m in run.messages if m["type"] == "SCHEMA"}
    assert set(schemas) == streams.every
    for stream, schema in schemas.items():
        if stream != MERGED:  # merged_leads has no attributes: nothing to flatten
            assert schema["properties"]["attributes"]["type"] == ["string", "null"]
    assert as_sorted_json(run.records[MERGED]) == as_sorted_json(
        delivered_merges(box, START, MID))
    expected = {a["marketoGUID"]: a for a in delivered_rows(box, START, MID)}
    total = 0
    for stream, rows in run.records.items():
        for record in rows if stream != MERGED else ():
            activity = expected[record["marketoGUID"]]
            assert json.loads(record["attributes"]) == activity["attributes"]
            assert record["leadId"] == activity["leadId"]
            total += 1
    assert total == len(expected)


def test_dash_dash_test_syncs_one_record_per_stream_and_leaves_no_job(
        box: Sandbox, streams: Streams, tmp_path: Path) -> None:
    jobs_before = len(box.stats()["jobs"])
    run = run_ok(tmp_path, tap_config(box), "--test")
    # A connection test exports the last day only: a backfill would spend export quota.
    assert {(j["startAt"], j["endAt"]) for j in box.stats()["jobs"][jobs_before:]} == {
        ("2024-01-10T00:00:00Z", END)}
    per_stream = Counter(m["stream"] for m in run.messages if m["type"] == "RECORD")
    last_day = streams.counts(delivered_rows(box, "2024-01-10T00:00:00Z", END))
    last_day[MERGED] = len(delivered_merges(box, "2024-01-10T00:00:00Z", END))
    assert set(per_stream) == {s for s, n in last_day.items() if n}
    assert set(per_stream.values()) == {1}
    schemas = {m["stream"] for m in run.messages if m["type"] == "SCHEMA"}
    assert schemas == streams.every
    statuses = Counter(j["status"] for j in box.stats()["jobs"])
    assert not statuses.keys() & {"Created", "Queued", "Processing"}, statuses


def meltano_extractor() -> dict[str, Any]:
    project = yaml.safe_load((ROOT / "meltano.yml").read_text())
    return next(p for p in project["plugins"]["extractors"]
                if p["name"] == "tap-marketo-activities")


def test_about_lists_every_setting_and_meltano_yml_declares_them(tmp_path: Path) -> None:
    done = subprocess.run([str(TAP), "--about", "--format", "json"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    about = json.loads(done.stdout)
    settings = about["settings"]["properties"]
    assert set(TAP_SETTINGS) <= set(settings)
    assert set(about["settings"]["required"]) == {"client_id", "client_secret", "base_url",
                                                  "start_date"}
    assert settings["client_secret"].get("secret") is True
    for name in TAP_SETTINGS:
        assert settings[name].get("description"), name
    extractor = meltano_extractor()
    declared = {s["name"]: s for s in extractor["settings"]}
    assert set(TAP_SETTINGS) <= set(declared)
    assert set(declared) <= set(settings)  # nothing the tap does not know
    for name in TAP_SETTINGS:
        assert {"label", "description", "kind"} <= set(declared[name]), name
    assert declared["client_secret"]["kind"] == "password"
    assert declared["client_secret"]["sensitive"] is True
    assert set(extractor["capabilities"]) <= set(about["capabilities"])
    assert {"catalog", "discover", "state", "about", "stream-maps", "schema-flattening",
            "batch"} <= set(extractor["capabilities"])


def test_meltano_takes_every_tap_setting_from_the_environment(tmp_path: Path) -> None:
    """Each setting's `kind` must let Meltano parse it from a TAP_MARKETO_ACTIVITIES_*
    variable into the JSON type the tap's schema wants."""
    values = {"client_id": "id", "client_secret": "secret", "base_url": "http://127.0.0.1:1",
              "start_date": "2024-01-01T00:00:00Z", "end_date": "2024-02-01T00:00:00Z",
              "window_days": 7, "activity_type_ids": [1, 12], "poll_interval_seconds": 5,
              "job_timeout_seconds": 600, "max_jobs_in_queue": 3, "max_export_mb_per_day": 100,
              "request_timeout_seconds": 30, "max_retry_seconds": 40, "max_job_attempts": 2}
    # api_limit_share is left out: a fraction needs kind `decimal`, which Meltano 4.4 cannot
    # take from an environment variable (it crashes serialising a Decimal).
    env = {f"TAP_MARKETO_ACTIVITIES_{k.upper()}": v if isinstance(v, str) else json.dumps(v)
           for k, v in values.items()}
    done = meltano(tmp_path, "config", "--unsafe", "print", "tap-marketo-activities", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert {k: printed[k] for k in values} == values


def test_batch_messages_are_loaded_by_an_sdk_target(
        box: Sandbox, streams: Streams, pg: Postgres, tmp_path: Path) -> None:
    require(TARGET_POSTGRES)
    storage = tmp_path / "batches"
    batch = {"encoding": {"format": "jsonl", "compression": "gzip"},
             "storage": {"root": storage.as_uri(), "prefix": "marketo-"}}
    run = run_ok(tmp_path / "tap", tap_config(box, end=MID, batch_config=batch))
    assert run.records == {}
    batches = [m for m in run.messages if m["type"] == "BATCH"]
    assert {m["stream"] for m in batches} == streams.every
    # A bookmark moves once per window, and only after the BATCH messages of that window's
    # records: a state seen earlier would lose those records if the run died in between.
    announced: dict[str, set[str]] = {stream: set() for stream in streams.every}
    in_files: Counter[str] = Counter()
    moves = 0
    for message in run.messages:
        if message["type"] == "BATCH":
            assert message["encoding"] == {"format": "jsonl", "compression": "gzip"}
            for url in message["manifest"]:
                path = Path(urlsplit(url).path)
                assert path.parent == storage and path.name.startswith("marketo-")
                with gzip.open(path, "rt") as lines:
                    guids = [json.loads(line)["marketoGUID"] for line in lines if line.strip()]
                announced[message["stream"]].update(guids)
                in_files[message["stream"]] += len(guids)
        if message["type"] == "STATE":
            for stream in streams.every:
                value = message["value"]["bookmarks"].get(stream, {}).get(
                    "replication_key_value")
                if value:
                    assert batched_guids(box, streams, stream, value) <= announced[stream], \
                        (stream, value)
                    moves += 1
    assert moves > len(streams.every)  # bookmarks moved window by window, not at the end
    expected = streams.counts(delivered_rows(box, START, MID))
    expected[MERGED] = len(delivered_merges(box, START, MID))
    assert +in_files == expected
    assert bookmarks(run.last_state) == dict.fromkeys(streams.every, MID)

    config = tmp_path / "target.json"
    config.write_text(json.dumps(pg.target_config("batched")))
    stdin = "".join(json.dumps(m) + "\n" for m in run.messages)
    done = subprocess.run([str(TARGET_POSTGRES), "--config", str(config)], input=stdin,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-4000:]
    assert +pg.counts("batched") == expected


def batched_guids(box: Sandbox, streams: Streams, stream: str, bookmark: str) -> set[str]:
    """The marketoGUIDs a stream must have announced once its bookmark is at `bookmark`."""
    if stream == MERGED:
        return {p["marketoGUID"] for p in delivered_merges(box, START, bookmark)}
    type_id = next(t for t, s in streams.by_type.items() if s == stream)
    return {a["marketoGUID"] for a in delivered_rows(box, START, bookmark, [type_id])}


def env_run(tmp: Path, variables: dict[str, str]) -> TapRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    env.update(variables)
    done = subprocess.run([str(TAP), "--config", "ENV"], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=120)
    return TapRun(done.returncode, parse_output(done.stdout), done.stderr)


def env_settings(box: Sandbox, type_ids: list[int]) -> dict[str, str]:
    return {"TAP_MARKETO_ACTIVITIES_CLIENT_ID": box.config["client_id"],
            "TAP_MARKETO_ACTIVITIES_CLIENT_SECRET": box.config["client_secret"],
            "TAP_MARKETO_ACTIVITIES_BASE_URL": box.base_url + "/rest",
            "TAP_MARKETO_ACTIVITIES_START_DATE": START[:10],
            "TAP_MARKETO_ACTIVITIES_END_DATE": MID,
            "TAP_MARKETO_ACTIVITIES_WINDOW_DAYS": "3",
            "TAP_MARKETO_ACTIVITIES_MAX_JOBS_IN_QUEUE": "2",
            "TAP_MARKETO_ACTIVITIES_ACTIVITY_TYPE_IDS": json.dumps(type_ids)}


def test_config_from_environment_variables(box: Sandbox, streams: Streams,
                                           tmp_path: Path) -> None:
    type_ids = sorted(streams.by_type)[:2]
    jobs_before = len(box.stats()["jobs"])
    run = env_run(tmp_path, env_settings(box, type_ids))
    assert run.returncode == 0, run.stderr[-4000:]
    expected = delivered_rows(box, START, MID, type_ids=type_ids)
    assert {s: len(r) for s, r in run.records.items()} == dict(streams.counts(expected))
    assert set(run.records) == {streams.by_type[t] for t in type_ids}
    windows = {(j["startAt"], j["endAt"]) for j in box.stats()["jobs"][jobs_before:]}
    # A one-day probe (no export size known yet), the rest of the first window, the next,
    # cut where the lookback's memory starts (lookback_hours 4 before the end): only the
    # last part's records are remembered.
    assert windows == {(START, "2024-01-02T00:00:00Z"),
                       ("2024-01-02T00:00:00Z", "2024-01-04T00:00:00Z"),
                       ("2024-01-04T00:00:00Z", "2024-01-06T20:00:00Z"),
                       ("2024-01-06T20:00:00Z", MID)}


def test_number_settings_from_environment_variables(box: Sandbox, streams: Streams,
                                                    tmp_path: Path) -> None:
    type_ids = sorted(streams.by_type)[:1]
    run = env_run(tmp_path, {**env_settings(box, type_ids),
                             "TAP_MARKETO_ACTIVITIES_POLL_INTERVAL_SECONDS": "0.1"})
    assert run.returncode == 0, run.stderr[-2000:]


# ---- the README's "With Meltano" blocks, as written -------------------------------------
# Here, not in test_readme.py: the runs in this project share its .meltano/run with the
# tests above, and the README's sandbox takes port 8765, so they go one at a time.

IN_THIS_REPO = ("### In this repository", "### In a project of your own")
OWN_PROJECT = ("### In a project of your own", "## Configuration")
SANDBOX_LINE = "tap-marketo-activities-sandbox --port 8765"
WAIT_FOR_8765 = """for _ in $(seq 1 100); do
  (exec 3<>/dev/tcp/127.0.0.1/8765) 2>/dev/null && break
  sleep 0.1
done
"""


def readme_sandbox() -> Sandbox:
    """The data of the README's sandbox command (its dates, the command line's defaults):
    what its runs must deliver. Never started: the command serves them."""
    return Sandbox(data_start=START, data_end=END, activities_per_day=ACTIVITIES_PER_DAY)


def test_the_readme_sandbox_command_and_the_sandbox_environment_agree() -> None:
    """Dates that give rows: the README's command serves what the environment reads, and
    meltano.yml's comment gives the same command."""
    command = f"tap-marketo-activities-sandbox --port 8765 --data-start {START} --data-end {END} &"
    assert command in one_line(readme_block(SANDBOX_LINE, IN_THIS_REPO))
    text = (ROOT / "meltano.yml").read_text()
    assert command in one_line("\n".join(line.lstrip("#") for line in text.splitlines()
                                         if line.startswith("#")))
    sandbox_env = next(e for e in yaml.safe_load(text)["environments"]
                       if e["name"] == "sandbox")
    tap = sandbox_env["config"]["plugins"]["extractors"][0]["config"]
    assert (tap["base_url"], tap["start_date"], tap["end_date"]) == (
        "http://127.0.0.1:8765", START, END)


def one_line(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def test_the_readme_set_up_block_is_what_scripts_test_runs_first() -> None:
    assert readme_block("scripts/setup", IN_THIS_REPO) == "bash scripts/setup\n"
    lines = (ROOT / "scripts" / "test").read_text().splitlines()
    assert "bash scripts/setup" in lines


def test_with_meltano_in_this_repository(tmp_path: Path) -> None:
    """The sandbox block and the runs block, as written, in one shell in this project (the
    set-up block is scripts/test's own first step). Only where the rows land is the test's:
    a JSONL folder and a PostgreSQL schema of its own, from the environment."""
    sandbox = readme_block(SANDBOX_LINE, IN_THIS_REPO)
    runs = readme_block("target-postgres", IN_THIS_REPO)
    schema = f"readme_{os.getpid()}"
    pg = Postgres(connection_settings(), psql_binary())
    script = sandbox + WAIT_FOR_8765 + runs + "kill %1\n"
    done = meltano_shell(ROOT, script, tmp_path, {
        "TARGET_JSONL_DESTINATION_PATH": str(tmp_path / "jsonl"),
        "TARGET_POSTGRES_DEFAULT_TARGET_SCHEMA": schema})
    try:
        assert done.returncode == 0, done.stderr[-4000:]
        box = readme_sandbox()
        assert_loaded_once(tmp_path / "jsonl", box, START, END)
        counts = pg.counts(schema)
        assert counts.pop(MERGED) == len(delivered_merges(box, START, END))
        assert sum(counts.values()) == len(all_guids(box, START, END))
    finally:
        pg.run_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@dataclass
class OwnProject:
    folder: Path
    run: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def own_project(tmp_path_factory: pytest.TempPathFactory) -> OwnProject:
    """The README's own-project blocks, as written, from `meltano init` on, in an empty
    folder, against the README's sandbox (its command as written, from this checkout)."""
    tmp = tmp_path_factory.mktemp("own")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP_MARKETO")}
    script = "".join(doc_blocks(OWN_PROJECT))
    with in_background(readme_block(SANDBOX_LINE, IN_THIS_REPO), ROOT, env):
        done = meltano_shell(tmp, script, tmp, {
            "CHECKOUT": str(ROOT), "PATH": os.pathsep.join([str(MELTANO_BIN), env["PATH"]])})
    return OwnProject(tmp / "my-meltano-project", done)


def test_with_meltano_in_a_project_of_your_own(own_project: OwnProject) -> None:
    assert own_project.run.returncode == 0, own_project.run.stderr[-4000:]
    plugins = (own_project.folder / "meltano.yml").read_text()
    assert f"pip_url: {ROOT}\n" in plugins and "pip_url: target-jsonl==0.1.4" in plugins
    assert_loaded_once(own_project.folder / "output", readme_sandbox(), START, END)


def test_own_project_selects_all_but_action_result(own_project: OwnProject,
                                                   tmp_path: Path) -> None:
    with Sandbox(job_latency=0.05, data_start=START, data_end=END) as box:
        listed = meltano_shell(own_project.folder, "meltano select tap-marketo-activities "
                               "--list --all", tmp_path, own_env(box, END))
    assert listed.returncode == 0, listed.stderr[-4000:]
    # "\t[selected   ] stream.property" lines: every actionResult excluded, all else in.
    listing = dict((m.group(2), m.group(1)) for m in
                   re.finditer(r"^\s*\[(\w+) *\] (\S+)$", listed.stdout, re.M))
    results = {name: how for name, how in listing.items() if name.endswith(".actionResult")}
    assert "activities_visit_webpage.actionResult" in results
    assert set(results.values()) == {"excluded"}
    assert {how for name, how in listing.items() if name not in results} <= {
        "selected", "automatic"}


def test_own_project_takes_a_2_hour_increment_through_rest_without_an_export_job(
        own_project: OwnProject, tmp_path: Path) -> None:
    """What the README's own project does on an hourly schedule: the default selection
    there leaves actionResult out, so a small increment needs no export job."""
    end = "2024-01-05T02:00:00Z"
    start = "2024-01-05T00:00:00Z"
    with Sandbox(job_latency=0.05, data_start=START, data_end=END,
                 activities_per_day=2000) as box:
        env = {**own_env(box, end), "TAP_MARKETO_ACTIVITIES_START_DATE": start,
               "TARGET_JSONL_DESTINATION_PATH": str(tmp_path / "jsonl")}
        done = meltano_shell(own_project.folder,
                             "meltano run tap-marketo-activities target-jsonl",
                             tmp_path, env)
        assert done.returncode == 0, done.stderr[-4000:]
        stats = box.stats()
        creates = [call for call in stats["calls"] if call.endswith("/create.json")]
        assert stats["jobs"] == [] and creates == [], done.stderr[-3000:]  # no export job
        assert stats["calls"].get("GET /rest/v1/activities.json"), stats["calls"]
        assert_loaded_once(tmp_path / "jsonl", box, start, end)


def own_env(box: Sandbox, end: str) -> dict[str, str]:
    """The own project's settings pointed at a sandbox of the test's own, from the
    environment (which wins over meltano.yml)."""
    return {"PATH": os.pathsep.join([str(MELTANO_BIN), os.environ["PATH"]]),
            "TAP_MARKETO_ACTIVITIES_BASE_URL": box.base_url,
            "TAP_MARKETO_ACTIVITIES_END_DATE": end}


def test_the_demo_runs_as_written(tmp_path: Path) -> None:
    """`bash scripts/demo`, the README's first command, as written: it sets up (quickly, once
    scripts/test has), runs both pipelines and prints what landed where."""
    block = readme_block("bash scripts/demo", ("# tap-marketo-activities", "## Why this tap"))
    demo = next(line for line in block.splitlines() if line.startswith("bash scripts/demo"))
    done = meltano_shell(ROOT, demo, tmp_path, {})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    total = re.search(r"^total +(\d+)$", done.stdout, re.M)
    assert total is not None, done.stdout[-4000:]
    box = readme_sandbox()
    assert int(total.group(1)) == len(all_guids(box, START, END)) + len(
        delivered_merges(box, START, END))
    assert "missing" not in done.stdout
