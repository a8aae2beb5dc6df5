"""The migration runner: ordering, atomicity, version tracking and refusal of newer databases."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiosqlite
import pytest

import storage.migrate
from storage.errors import DatabaseTooNewError, MigrationError
from storage.migrate import current_version, discover, migrate, split_statements

EXPECTED_TABLES = {
    "users",
    "guilds",
    "jobs",
    "images",
    "banned_words",
    "audit_log",
    "usage",
    "service_state",
    "ledger_entries",
}
LATEST = len(discover())


@pytest.fixture
async def conn(tmp_path: Path) -> AsyncIterator[aiosqlite.Connection]:
    async with aiosqlite.connect(tmp_path / "test.db", isolation_level=None) as connection:
        await connection.execute("PRAGMA busy_timeout = 5000")
        yield connection


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql, encoding="utf-8")
    return directory


async def tables(conn: aiosqlite.Connection) -> set[str]:
    rows = await conn.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    return {row[0] for row in rows}


async def schema(conn: aiosqlite.Connection) -> list[tuple[str, str]]:
    rows = await conn.execute_fetchall("SELECT name, sql FROM sqlite_master ORDER BY name")
    return [(row[0], row[1]) for row in rows]


def test_default_directory_holds_the_initial_migration() -> None:
    """The packaged migrations start with 0001_initial and run 1..N."""
    migrations = discover()
    assert migrations[0].version == 1
    assert migrations[0].name == "initial"
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))


async def test_fresh_database_is_migrated_to_the_latest(conn: aiosqlite.Connection) -> None:
    """A new database gets every table and the latest user_version."""
    assert LATEST >= 2
    assert await current_version(conn) == 0
    assert await migrate(conn) == LATEST
    assert await current_version(conn) == LATEST
    assert await tables(conn) >= EXPECTED_TABLES


async def test_initial_schema_has_the_job_indexes(conn: aiosqlite.Connection) -> None:
    """jobs is indexed by state and by (user_id, submitted_at_ms)."""
    await migrate(conn)
    rows = await conn.execute_fetchall("PRAGMA index_list(jobs)")
    indexed = set()
    for row in rows:
        columns = await conn.execute_fetchall(f"PRAGMA index_info({row[1]})")
        indexed.add(tuple(column[2] for column in columns))
    assert ("state",) in indexed
    assert ("user_id", "submitted_at_ms") in indexed


async def test_rerunning_is_a_no_op(conn: aiosqlite.Connection) -> None:
    """Migrating an up-to-date database changes nothing and reports the same version."""
    await migrate(conn)
    before = await schema(conn)
    assert await migrate(conn) == LATEST
    assert await schema(conn) == before


async def test_newer_database_is_refused_untouched(conn: aiosqlite.Connection) -> None:
    """A database at version 99 is refused, naming both versions, and left as it was."""
    await conn.execute("PRAGMA user_version = 99")
    with pytest.raises(DatabaseTooNewError) as caught:
        await migrate(conn)
    assert "99" in caught.value.message
    assert f"({LATEST})" in caught.value.message
    assert (caught.value.db_version, caught.value.code_version) == (99, LATEST)
    assert await current_version(conn) == 99
    assert await tables(conn) == set()


async def test_broken_migration_is_rolled_back_whole(
    conn: aiosqlite.Connection, tmp_path: Path
) -> None:
    """A failing 0002 leaves the database at version 1 with none of 0002's statements kept."""
    directory = write_migrations(
        tmp_path / "migrations",
        {
            "0001_first.sql": "CREATE TABLE first (x INTEGER);",
            "0002_broken.sql": "CREATE TABLE a (x);\nCREATE TABLE b (;",
        },
    )
    with pytest.raises(MigrationError) as caught:
        await migrate(conn, directory)
    assert "0002_broken.sql" in caught.value.message
    assert "syntax error" in caught.value.message
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert await current_version(conn) == 1
    assert await tables(conn) == {"first"}
    assert not conn.in_transaction


async def test_migration_already_applied_by_another_process_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another process migrates between our version check and our write lock, we skip."""
    path = tmp_path / "shared.db"
    async with aiosqlite.connect(path, isolation_level=None) as other:
        await migrate(other)
    real_current_version = current_version
    calls = 0

    async def stale_first_read(conn: aiosqlite.Connection) -> int:
        nonlocal calls
        calls += 1
        return 0 if calls == 1 else await real_current_version(conn)

    monkeypatch.setattr(storage.migrate, "current_version", stale_first_read)
    async with aiosqlite.connect(path, isolation_level=None) as late:
        assert await migrate(late) == LATEST
    assert calls > 1


def test_gap_in_versions_is_rejected(tmp_path: Path) -> None:
    """0001 followed by 0003 is refused, naming the file after the gap."""
    directory = write_migrations(
        tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (x);", "0003_c.sql": "CREATE TABLE c (x);"}
    )
    with pytest.raises(MigrationError, match=r"0003_c\.sql"):
        discover(directory)


def test_duplicate_versions_are_rejected(tmp_path: Path) -> None:
    """Two files with the same number are refused, naming both."""
    directory = write_migrations(
        tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (x);", "0001_b.sql": "CREATE TABLE b (x);"}
    )
    with pytest.raises(MigrationError) as caught:
        discover(directory)
    assert "0001_a.sql" in caught.value.message
    assert "0001_b.sql" in caught.value.message


def test_files_not_named_like_migrations_are_ignored(tmp_path: Path) -> None:
    """Only NNNN_name.sql files count; others in the directory are skipped."""
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_a.sql": "CREATE TABLE a (x);",
            "__init__.py": "",
            "README.md": "notes",
            "2_short.sql": "CREATE TABLE s (x);",
            "0002_Upper.sql": "CREATE TABLE u (x);",
            "0002_b.sql.bak": "CREATE TABLE k (x);",
        },
    )
    assert [(m.version, m.name) for m in discover(directory)] == [(1, "a")]


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN;\nCREATE TABLE a (x);\nCOMMIT;",
        "CREATE TABLE a (x);\n-- done\ncommit;",
        "CREATE TABLE a (x);\nPRAGMA user_version = 5;",
        "CREATE TABLE a (x);\n/* why */ pragma main.user_version=5;",
    ],
)
def test_migration_managing_transactions_or_version_is_rejected(tmp_path: Path, sql: str) -> None:
    """A file with its own BEGIN/COMMIT or user_version is refused before anything runs."""
    directory = write_migrations(tmp_path / "m", {"0001_a.sql": sql})
    with pytest.raises(MigrationError, match=r"0001_a\.sql"):
        discover(directory)


def test_missing_directory_is_a_migration_error(tmp_path: Path) -> None:
    """A migrations directory that does not exist is reported as such."""
    with pytest.raises(MigrationError, match="does not exist"):
        discover(tmp_path / "nowhere")


def test_split_respects_strings_comments_and_triggers() -> None:
    """A ';' inside a string, a comment or a trigger body does not end a statement."""
    sql = (
        "-- header; with a semicolon\n"
        "CREATE TABLE t (x TEXT DEFAULT ';');\n"
        "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN\n"
        "  UPDATE t SET x = 'a;b' WHERE rowid = new.rowid;\n"
        "END;\n"
        "/* trailing; comment */\n"
    )
    statements = split_statements(sql)
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT ';');")
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")


async def test_migration_with_trigger_applies(conn: aiosqlite.Connection, tmp_path: Path) -> None:
    """A migration whose trigger body holds several statements applies and works."""
    directory = write_migrations(
        tmp_path / "m",
        {
            "0001_t.sql": (
                "CREATE TABLE t (x INTEGER);\nCREATE TABLE log (x INTEGER);\n"
                "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN\n"
                "  INSERT INTO log VALUES (new.x);\n  INSERT INTO log VALUES (new.x + 1);\nEND;\n"
            )
        },
    )
    assert await migrate(conn, directory) == 1
    await conn.execute("INSERT INTO t VALUES (1)")
    rows = await conn.execute_fetchall("SELECT x FROM log ORDER BY x")
    assert [row[0] for row in rows] == [1, 2]
