"""The team registry: the record in PostgreSQL, shared by several machines.

A real PostgreSQL server (Debian's package; tests/postgres_server.py) starts once for the
session, and each test gets a fresh database. The registry's own tests run again here against
it (imported below: pytest collects them in this module, so they use this module's `ws`
and `cli`, whose workspace keeps its record in PostgreSQL), then the tests that only a server
can answer: a dialect that translates, concurrent writers on one database, a record shared
by two folders, and the refusals. Without the server binaries the tests skip, saying why
(CI installs them and fails such a skip); without psycopg they skip through importorskip.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import postgres_server
from conftest import SYSTEM_PACKAGE_ABSENT
from lmforge.errors import LmforgeError
from lmforge.registry import Workspace, db
from lmforge.registry import postgres as pg
from lmforge.registry.verify import verify

# The registry's behaviour, run again with the record in PostgreSQL. Tests that read
# registry.db with sqlite3 themselves are left out; their PostgreSQL forms are below.
from test_registry import (  # noqa: F401
    test_a_deleted_artifact_folder_is_rebuilt_by_registering_again,
    test_a_failing_redteam_report_blocks_approval_and_force_is_recorded,
    test_ambiguous_prefix_lists_candidates,
    test_approval_needs_a_passing_eval_report_of_that_model,
    test_bad_registration_is_a_clear_error,
    test_flipped_byte_is_refused_naming_the_file,
    test_illegal_move_explains_allowed_moves_and_force_is_recorded,
    test_lifecycle_legal_moves_and_history,
    test_lineage_of_a_three_level_chain,
    test_missing_extra_and_edited_files_are_refused,
    test_register_and_resolve_round_trip,
    test_register_copies_a_folder_from_outside_and_leaves_it,
    test_reopening_a_workspace_keeps_everything,
    test_resolve_by_prefix_alias_latest_and_path,
    test_resolve_errors_name_the_problem,
    test_two_processes_register_at_once,
)
from test_registry_gates import (  # noqa: F401
    test_a_report_without_numbers_cannot_meet_a_minimum,
    test_alias_history_across_set_move_and_remove,
    test_an_alias_change_and_its_history_commit_together,
    test_approval_is_refused_on_a_too_small_eval_set_naming_the_rule,
    test_cli_alias_history_show_and_promote_thresholds,
    test_red_team_minimums_and_maximums_refuse_naming_the_rule,
    test_the_stored_decision_holds_every_gate_and_its_numbers,
)
from test_registry_lifecycle import (  # noqa: F401
    add,
    approved,
    four_writers_at_once,
    model,
    test_a_corrupted_bundle_is_refused_and_the_workspace_unchanged,
    test_a_crash_inside_the_move_transaction_keeps_the_previous_state,
    test_a_crash_mid_archive_leaves_a_state_that_archiving_again_finishes,
    test_a_model_never_served_says_so_and_a_crash_before_the_report_is_finished,
    test_a_server_loading_a_deprecated_model_sends_the_headers,
    test_archive_restore_round_trip_is_bit_identical,
    test_cli_archive_show_restore,
    test_cli_promote_to_and_force_visible_in_show,
    test_deprecation_checks_successor_and_reason,
    test_every_move_records_who_when_why_and_the_command,
    test_illegal_moves_name_the_rule_and_leave_no_event,
    test_killing_an_archive_at_any_moment_loses_nothing,
    test_ls_and_show_mark_the_deprecation,
    test_retire_needs_a_deprecation_or_a_reason,
    test_retirement_report_tells_the_service_life,
    test_verify_catches_a_single_flipped_byte_in_any_artifact_file,
    test_verify_reports_every_drift_and_the_cli_exits_1,
)

_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres_server.Server]:
    pytest.importorskip("psycopg", reason="the team registry's driver: pip install "
                                          "'lmforge[team]'")
    bin_dir = postgres_server.find_bin()
    if bin_dir is None:
        pytest.skip(f"{SYSTEM_PACKAGE_ABSENT}: no PostgreSQL server binaries in "
                    f"{postgres_server.PG_ROOT}/*/bin (apt-get install postgresql)")
    try:
        with postgres_server.running(bin_dir) as server:
            yield server
    except postgres_server.CannotStart as e:
        if os.environ.get("CI", "").lower() == "true":  # installed there: it must start
            pytest.fail(f"PostgreSQL {bin_dir.parent.name} is installed but did not start: {e}")
        pytest.skip(f"no PostgreSQL server could start from {bin_dir}: {e}")


def new_database(server: postgres_server.Server) -> str:
    """A fresh, empty database on `server`; its URL."""
    import psycopg

    name = f"registry_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return server.url(name)


def drop_database(server: postgres_server.Server, url: str) -> None:
    """Drop a test's database (about 7 MB each), closing what it left connected."""
    import psycopg

    with psycopg.connect(server.url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')


@pytest.fixture(autouse=True)
def team_registry(pg_server, monkeypatch) -> Iterator[str]:
    """Every workspace this test opens (itself, the CLI, child processes, a server) keeps
    its record in a fresh PostgreSQL database."""
    url = new_database(pg_server)
    monkeypatch.setenv("LMFORGE_REGISTRY_URL", url)
    yield url
    drop_database(pg_server, url)


@pytest.fixture
def ws(team_registry, tmp_path: Path) -> Iterator[Workspace]:
    with Workspace.open(tmp_path / "ws") as w:
        assert w.registry_url == team_registry and not (w.root / "registry.db").exists()
        yield w


# --- the dialect: SQLite's SQL, translated in one place ------------------------------------

class TestDialect:
    @pytest.fixture(autouse=True)
    def team_registry(self) -> None:
        """Pure translation: no server needed."""

    def test_placeholders_become_psycopgs_outside_literals_and_comments(self):
        sql = ("SELECT id FROM t WHERE a = ? AND b = :name AND c = 'it''s ? :x' "
               "AND d LIKE 'x%' -- what's this? :y\n AND e = ?")
        # psycopg reads `%` as a placeholder everywhere, in literals too: doubled.
        assert pg.translate(sql) == ("SELECT id FROM t WHERE a = %s AND b = %(name)s AND "
                                     "c = 'it''s ? :x' AND d LIKE 'x%%' \n AND e = %s")

    def test_sqlite_only_forms_are_translated_or_refused(self):
        assert pg.translate("INSERT OR IGNORE INTO a (x) VALUES (?)") == \
            "INSERT INTO a (x) VALUES (%s) ON CONFLICT DO NOTHING"
        assert pg.translate("seq INTEGER PRIMARY KEY AUTOINCREMENT, x TEXT") == \
            "seq BIGSERIAL PRIMARY KEY, x TEXT"
        assert pg.translate("SELECT x::text FROM t") == "SELECT x::text FROM t"
        for sql in ("PRAGMA user_version", "INSERT OR REPLACE INTO a VALUES (1)"):
            with pytest.raises(ValueError, match="no PostgreSQL form"):
                pg.translate(sql)

    def test_every_migration_translates(self):
        for step in db.MIGRATIONS:
            for statement in step:
                out = pg.translate(statement)
                assert "AUTOINCREMENT" not in out and "--" not in out and "?" not in out

    def test_the_password_never_shows(self):
        assert pg.shown("postgresql://ann:s3cret@db.lab:5433/reg") == \
            "postgresql://ann@db.lab:5433/reg"
        assert pg.shown("postgresql://ann@db.lab/reg") == "postgresql://ann@db.lab/reg"

    def test_a_url_that_is_not_postgresql_or_no_server_is_a_clear_error(self, tmp_path,
                                                                          monkeypatch):
        monkeypatch.setenv("LMFORGE_REGISTRY_URL", "mysql://ann@db/reg")
        with pytest.raises(LmforgeError, match="is not a PostgreSQL URL") as e:
            Workspace.open(tmp_path / "ws")
        assert "LMFORGE_REGISTRY_URL" in e.value.hint
        pytest.importorskip("psycopg")
        nowhere = f"postgresql://ann:s3cret@/reg?host={tmp_path}&port=1"
        with pytest.raises(LmforgeError, match="cannot open the team registry") as e:
            Workspace.open(tmp_path / "ws", registry_url=nowhere)
        assert "s3cret" not in str(e.value) and "server is running" in e.value.hint

    def test_without_psycopg_the_error_says_what_to_install(self, tmp_path, monkeypatch):
        monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
        with pytest.raises(LmforgeError, match="needs psycopg") as e:
            Workspace.open(tmp_path / "ws", registry_url="postgresql://ann@db/reg")
        assert e.value.hint == "pip install 'lmforge[team]'"


# --- the record on a server ----------------------------------------------------------------

def test_rows_read_by_position_name_and_as_a_mapping(ws):
    m = model(ws)
    ws.set_alias("production", m.id)
    assert ws.archive_of(m.id) is None
    row = ws._conn.execute("SELECT alias, artifact_id FROM aliases").fetchone()
    assert row[0] == row["alias"] == "production" and dict(row)["artifact_id"] == m.id
    alias, art_id = row
    assert (alias, art_id) == ("production", m.id)


def test_the_cli_takes_the_url_as_an_option(cli, team_registry, tmp_path, monkeypatch):
    monkeypatch.delenv("LMFORGE_REGISTRY_URL")
    with Workspace.open(cli.workspace, registry_url=team_registry) as w:
        m = model(w)
    code, out, err = cli("registry", "ls")  # without the URL: the workspace's own SQLite
    assert code == 0 and m.id not in out
    code, out, err = cli("--registry-url", team_registry, "registry", "ls")
    assert code == 0 and m.id in out, err
    code, _, err = cli("--registry-url", f"postgresql://x@/nodb?host={tmp_path}&port=1",
                       "registry", "ls")
    assert code == 2 and "cannot open the team registry" in err and "Traceback" not in err


def test_two_machines_share_the_record_and_the_files_at_different_mounts(team_registry,
                                                                         tmp_path):
    """Machine A mounts the shared storage at one path, machine B at another: the record
    keeps paths relative to the workspace, so both find and verify every artifact."""
    with Workspace.open(tmp_path / "mount-a" / "ws") as a:
        m = approved(a, b"weights of the team")
        a.set_alias("production", m.id)
    shutil.copytree(tmp_path / "mount-a", tmp_path / "mount-b", symlinks=True)
    with Workspace.open(tmp_path / "mount-b" / "ws") as b:
        assert b.resolve("production").path == b.root / "artifacts" / "model" / m.id
        b.set_state("production", "deployed", "rolled out from machine B")
        assert verify(b).ok and verify(b).checked == 3
    with Workspace.open(tmp_path / "mount-a" / "ws") as a:
        assert a.state_of(m.id) == "deployed"
        assert a.history(m.id)[-1].reason == "rolled out from machine B"


def test_a_schema_one_record_is_upgraded_keeping_its_rows(team_registry, tmp_path):
    first = pg.connect(team_registry, db.APPLICATION_ID, db.MIGRATIONS[:1])
    first.execute("INSERT INTO artifacts (id, kind, stage, name, path, created, state, "
                  "settings_json, metrics_json, manifest_sha256, lmforge_version) VALUES "
                  "('model-0', 'model', 'init', NULL, 'artifacts/model/model-0', "
                  "'2026-01-01T00:00:00Z', 'initialized', '{}', '{}', 'x', '0')")
    first.execute("INSERT INTO events (artifact_id, from_state, to_state, reason, time) "
                  "VALUES ('model-0', NULL, 'initialized', 'registered', "
                  "'2026-01-01T00:00:00Z')")
    first.close()
    with Workspace.open(tmp_path / "ws") as w:
        assert [(e.to_state, e.note, e.actor) for e in w.history("model-0")] == [
            ("initialized", "", "")]
        w.set_state("model-0", "pretrained", "trained")
        m = model(w)
        assert [r.id for r in w.list(kind="model")] == [m.id, "model-0"]
        version = w._conn.execute("SELECT version FROM lmforge_schema").fetchone()[0]
        assert version == len(db.MIGRATIONS)


def test_a_schema_three_record_starts_alias_history_from_its_aliases(team_registry,
                                                                    tmp_path):
    third = pg.connect(team_registry, db.APPLICATION_ID, db.MIGRATIONS[:3])
    third.execute("INSERT INTO artifacts (id, kind, stage, name, path, created, state, "
                  "settings_json, metrics_json, manifest_sha256, lmforge_version) VALUES "
                  "('model-0', 'model', 'init', NULL, 'artifacts/model/model-0', "
                  "'2026-01-01T00:00:00Z', 'tuned', '{}', '{}', 'x', '0')")
    third.execute("INSERT INTO aliases VALUES ('production', 'model-0', "
                  "'2026-01-02T00:00:00Z')")
    third.close()
    with Workspace.open(tmp_path / "ws") as w:
        [move] = w.alias_history("production")
        assert (move.artifact_id, move.previous_id, move.time) == (
            "model-0", None, "2026-01-02T00:00:00Z")
        m = model(w)
        w.set_alias("production", m.id, "newer")
        assert [x.previous_id for x in w.alias_history("production")] == [None, "model-0"]


def test_foreign_and_newer_databases_are_refused(pg_server, tmp_path):
    import psycopg

    foreign = new_database(pg_server)
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE artifacts (id TEXT)")
    with pytest.raises(LmforgeError, match="is not an lmforge registry.*artifacts") as e:
        Workspace.open(tmp_path / "ws", registry_url=foreign)
    assert "empty database" in e.value.hint
    newer = new_database(pg_server)
    Workspace.open(tmp_path / "ws", registry_url=newer).close()
    with psycopg.connect(newer, autocommit=True) as conn:
        conn.execute("UPDATE lmforge_schema SET version = 999")
    with pytest.raises(LmforgeError, match="written by a newer lmforge") as e:
        Workspace.open(tmp_path / "ws", registry_url=newer)
    assert "upgrade" in e.value.hint
    for url in (foreign, newer):
        drop_database(pg_server, url)


def test_a_lost_server_is_a_clear_error(ws, pg_server):
    import psycopg

    m = model(ws)
    with psycopg.connect(pg_server.url("postgres"), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s", (urlsplit(ws.registry_url).path.lstrip("/"),))
    with pytest.raises(LmforgeError, match="lost the connection to the team registry") as e:
        ws.set_state(m.id, "pretrained", "trained")
    assert "server is up" in e.value.hint


# --- many writers on one record -------------------------------------------------------------

def _open_fresh(root: str, start, out) -> None:
    start.wait()
    with Workspace.open(root) as w:
        out.put(w._conn.execute("SELECT version FROM lmforge_schema").fetchone()[0])


def test_processes_opening_a_new_database_at_once_create_one_schema(tmp_path):
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_open_fresh, args=(str(tmp_path / f"ws{i}"), start, out))
             for i in range(4)]
    for p in procs:
        p.start()
    start.set()
    versions = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert versions == [len(db.MIGRATIONS)] * 4


def test_four_processes_writing_at_once_leave_a_consistent_record(tmp_path):
    """tests/test_registry_lifecycle.py's test of the same name, with the counts read from
    the server."""
    root = str(tmp_path / "ws")
    four_writers_at_once(root)
    with Workspace.open(root) as w:
        count = {t: w._conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("artifacts", "events", "parents")}
    assert count == {"artifacts": 30, "events": 48, "parents": 0}


def _race_moves(root: str, ids: list[str], worker: int, start, out) -> None:
    """Try to deploy every model: each move reads the state, checks it, and writes."""
    start.wait()
    won, refused = [], []
    with Workspace.open(root) as w:
        for art_id in ids[worker:] + ids[:worker]:  # different orders: real contention
            try:
                w.set_state(art_id, "deployed", f"worker {worker}")
                won.append(art_id)
            except LmforgeError as e:
                assert "is already deployed" in e.message, e.message
                refused.append(art_id)
    out.put((won, refused))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_racing_moves_of_the_same_models_record_each_move_once(tmp_path, monkeypatch,
                                                               backend):
    """Four processes move the same eight models at once: the check and the write of a move
    happen under one write lock, so each model is deployed once and the three others are
    refused, never recorded twice."""
    if backend == "sqlite":
        monkeypatch.delenv("LMFORGE_REGISTRY_URL")
    root = str(tmp_path / "ws")
    with Workspace.open(root) as w:
        ids = [approved(w, f"model {i}".encode()).id for i in range(8)]
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race_moves, args=(root, ids, k, start, out)) for k in range(4)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    won = [i for wins, _ in results for i in wins]
    assert sorted(won) == sorted(ids)  # each once, by one worker
    assert sum(len(refused) for _, refused in results) == 3 * len(ids)
    with Workspace.open(root) as w:
        for art_id in ids:
            moves = [e.to_state for e in w.history(art_id)]
            assert moves == ["pretrained", "approved", "deployed"]
            assert w.history(art_id)[-1].seq > w.history(art_id)[-2].seq
