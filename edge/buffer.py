"""The store-and-forward buffer: every measurement goes to disk first and leaves only when the broker has it.

SQLite in WAL mode with ``synchronous=FULL``: a committed batch survives a killed process and a power cut. Writes
are batched, one transaction per poll cycle, because a Raspberry Pi's SD card wears with every small write. When
the buffer holds ``max_messages`` it drops the oldest and counts what it dropped. The buffer also keeps the agent's
session counter, so a restarted agent starts a new session that the ingest can tell from the old one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BufferError", "BufferedMessage", "MeasurementBuffer"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    session INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class BufferError(RuntimeError):
    """The buffer file cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class BufferedMessage:
    id: int
    topic: str
    payload: bytes
    session: int


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
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self._lock.release()


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
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise BufferError(
                f"buffer {self.path} cannot be used: {exc}; move it aside to start an empty one "
                "(its unsent measurements are lost then)"
            ) from None
        self._depth = self._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- meta ------------------------------------------------------------------------------------------------
    def _meta(self, key: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def next_session(self) -> int:
        """A new session number, one more than the last one this buffer ever gave."""
        with self._transaction():
            session = self._meta("session") + 1
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('session', ?)", (session,))
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

    def append_many(self, messages: Iterable[tuple[str, bytes]], *, session: int) -> None:
        """Store a batch in one transaction; when full, drop the oldest to make room and count them."""
        rows = [(topic, payload, session) for topic, payload in messages]
        if not rows:
            return
        with self._transaction():
            self._db.executemany("INSERT INTO messages (topic, payload, session) VALUES (?, ?, ?)", rows)
            excess = self._depth + len(rows) - self.max_messages
            if excess > 0:
                self._db.execute(
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                    (excess,),
                )
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('dropped', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                    (excess,),
                )
            self._depth = min(self._depth + len(rows), self.max_messages)

    def last_id(self) -> int:
        """Id of the newest stored message (0 when empty): what was buffered up to now."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM messages").fetchone()
        return int(row[0] or 0)

    def peek(self, limit: int, *, after_id: int = 0) -> list[BufferedMessage]:
        """The oldest ``limit`` messages with an id above ``after_id``, in the order they were stored."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, session FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [BufferedMessage(int(r[0]), str(r[1]), bytes(r[2]), int(r[3])) for r in rows]

    def ack(self, ids: Sequence[int]) -> None:
        """The broker has these: forget them."""
        if not ids:
            return
        with self._transaction():
            # One statement for the batch (the agent flushes at most 5,000 ids, under SQLite's 32,766 parameters).
            marks = ",".join("?" * len(ids))
            cursor = self._db.execute(f"DELETE FROM messages WHERE id IN ({marks})", list(ids))
            self._depth = max(0, self._depth - max(cursor.rowcount, 0))
