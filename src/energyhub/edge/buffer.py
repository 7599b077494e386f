"""The store-and-forward buffer: every measurement goes to disk first and leaves only when the database has it.

SQLite in WAL mode with ``synchronous=FULL``: a committed batch survives a killed process and a power cut. Writes
are batched, one transaction per poll cycle, because a Raspberry Pi's SD card wears with every small write. A row
is deleted only when the ingest confirms its (session, seq) stored (``confirm``), not when the broker has it: a
broker that restarts, or that has no subscriber for it, can lose what it acknowledged. When the buffer holds
``max_messages`` it drops the oldest and counts what it dropped.

The buffer also keeps the agent's session counter, so a restarted agent starts a new session that the ingest can
tell from the old one. The counter lives twice (in the database and in a small file beside it) and never goes
below the wall clock's seconds, so a deleted buffer file does not make a session number repeat.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BufferError", "BufferedMessage", "MeasurementBuffer"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    session INTEGER NOT NULL,
    seq INTEGER
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_INDEX = "CREATE INDEX IF NOT EXISTS messages_by_seq ON messages (session, seq)"


class BufferError(RuntimeError):
    """The buffer file cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class BufferedMessage:
    id: int
    topic: str
    payload: bytes
    session: int
    seq: int | None = None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on an exception (autocommit connections need it spelled out)."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error:
                    # A full disk can fail the COMMIT itself: leave no transaction open behind the error.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            elif self._db.in_transaction:
                self._db.execute("ROLLBACK")
        finally:
            self._lock.release()


def _seq_of(payload: bytes) -> int | None:
    """The sequence number inside a stored measurement (rows written before the ``seq`` column existed)."""
    try:
        seq = json.loads(payload).get("seq")
    except (ValueError, AttributeError):
        return None
    return seq if isinstance(seq, int) else None


class MeasurementBuffer:
    def __init__(self, path: Path, *, max_messages: int = 1_000_000) -> None:
        if max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        self.path = Path(path)
        self.max_messages = max_messages
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The poll loop appends from a worker thread while the publish loop reads and deletes: one connection,
        # so every use of it goes through this lock (a second BEGIN on it would fail).
        self._lock = threading.RLock()
        self._db = self._open()
        self._inode = self._file_id()
        self._depth = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def _open(self) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            db.execute("PRAGMA quick_check").fetchone()
            columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            if "seq" not in columns:  # a buffer from before delivery confirmations: fill the column once
                db.execute("ALTER TABLE messages ADD COLUMN seq INTEGER")
                rows = db.execute("SELECT id, payload FROM messages").fetchall()
                db.executemany("UPDATE messages SET seq = ? WHERE id = ?", [(_seq_of(p), i) for i, p in rows])
            db.execute(_INDEX)
        except sqlite3.DatabaseError as exc:
            raise BufferError(
                f"buffer {self.path} cannot be used: {exc}; move it aside to start an empty one "
                "(its unsent measurements are lost then)"
            ) from None
        return db

    def _file_id(self) -> tuple[int, int] | None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the file itself ------------------------------------------------------------------------------------
    def replaced(self) -> bool:
        """True when the file at ``path`` is no longer the one this buffer writes (deleted or swapped).

        A deleted SQLite file stays writable through the open connection, and everything written to it
        disappears with the process: one ``stat`` per poll tells.
        """
        return self._file_id() != self._inode

    def reopen(self) -> int:
        """Open a fresh file at ``path`` and move every row of the lost one into it; return how many moved."""
        with self._lock:
            rows = self._db.execute(
                "SELECT topic, payload, session, seq FROM messages ORDER BY id"
            ).fetchall()
            meta = self._db.execute("SELECT key, value FROM meta").fetchall()
            self._db.close()  # closing checkpoints into the lost file; its WAL at our path goes with it
            if self._file_id() is None:
                for suffix in ("-wal", "-shm"):  # a left-over WAL would be replayed into the new file
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f"{self.path}{suffix}")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._open()
            self._inode = self._file_id()
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", meta)
                self._db.executemany(
                    "INSERT INTO messages (topic, payload, session, seq) VALUES (?, ?, ?, ?)", rows
                )
            self._depth = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        return len(rows)

    # -- meta ------------------------------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def _session_file(self) -> Path:
        return self.path.with_name(self.path.name + ".session")

    def next_session(self) -> int:
        """A new session number, above every one this buffer (or its file beside it) ever gave, and at least the
        wall clock's Unix seconds: it cannot repeat when the buffer file is deleted or replaced."""
        try:
            on_file = int(self._session_file.read_text(encoding="ascii").strip() or 0)
        except (FileNotFoundError, ValueError):
            on_file = 0
        with self._transaction():
            session = max(self._meta("session"), on_file) + 1
            session = max(session, int(time.time()))
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('session', ?)", (session,))
        tmp = self._session_file.with_name(self._session_file.name + ".tmp")
        with contextlib.suppress(OSError):  # a full disk: the database still holds it
            with open(tmp, "w", encoding="ascii") as handle:
                handle.write(f"{session}\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self._session_file)
        return session

    @property
    def dropped(self) -> int:
        """Messages dropped because the buffer was full, over the buffer's whole life."""
        return self._meta("dropped")

    @property
    def depth(self) -> int:
        return int(self._depth)

    # -- messages -------------------------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, self._lock)

    def append_many(self, messages: Iterable[tuple[str, bytes, int]], *, session: int) -> None:
        """Store a batch of (topic, payload, seq) in one transaction; when full, drop the oldest and count them.

        Raises ``sqlite3.OperationalError`` when the disk is full: the caller keeps the batch and tries again.
        """
        self.append_rows([(topic, payload, seq, session) for topic, payload, seq in messages])

    def append_rows(self, rows: Sequence[tuple[str, bytes, int, int]]) -> None:
        """``append_many`` for rows of (topic, payload, seq, session), sessions mixed."""
        if not rows:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT INTO messages (topic, payload, seq, session) VALUES (?, ?, ?, ?)", rows
            )
            excess = self._depth + len(rows) - self.max_messages
            if excess > 0:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._count_dropped(excess)
            depth = min(self._depth + len(rows), self.max_messages)
        self._depth = depth  # only once committed

    def _count_dropped(self, count: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (count,),
        )

    def count_dropped(self, count: int) -> None:
        """Add ``count`` measurements that never reached the buffer (held in memory while the disk was full)."""
        if count > 0:
            with self._transaction():
                self._count_dropped(count)

    def last_id(self) -> int:
        """Id of the newest stored message (0 when empty): what was buffered up to now."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM messages").fetchone()
        return int(row[0] or 0)

    def held_from(self, session: int) -> int | None:
        """The lowest sequence number of ``session`` still held (None when none is)."""
        with self._lock:
            row = self._db.execute("SELECT MIN(seq) FROM messages WHERE session = ?", (session,)).fetchone()
        return None if row[0] is None else int(row[0])

    def peek(self, limit: int, *, after_id: int = 0) -> list[BufferedMessage]:
        """The oldest ``limit`` messages with an id above ``after_id``, in the order they were stored."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, session, seq FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [
            BufferedMessage(int(r[0]), str(r[1]), bytes(r[2]), int(r[3]), None if r[4] is None else int(r[4]))
            for r in rows
        ]

    def ack(self, ids: Sequence[int]) -> None:
        """Forget these messages by id (the broker refused them for good: holding them would help no one)."""
        if not ids:
            return
        with self._transaction():
            # One statement for the batch (at most 5,000 ids, under SQLite's 32,766 parameters).
            marks = ",".join("?" * len(ids))
            cursor = self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", list(ids))
        self._depth = max(0, self._depth - max(cursor.rowcount, 0))

    def confirm(self, confirmed: Iterable[tuple[int, int, int]]) -> int:
        """The database has these (session, first seq, last seq) ranges: forget them; return how many went."""
        ranges = list(confirmed)
        if not ranges:
            return 0
        with self._transaction():
            deleted = 0
            for session, first, last in ranges:
                cursor = self._db.execute(
                    "DELETE FROM messages WHERE session = ? AND seq BETWEEN ? AND ?", (session, first, last)
                )
                deleted += max(cursor.rowcount, 0)
        self._depth = max(0, self._depth - deleted)
        return deleted
