"""The on-disk buffer keeps order, survives a killed process, and drops only the oldest when full."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from energyhub.edge.buffer import BufferError, MeasurementBuffer


def test_order_peek_ack(tmp_path):
    buffer = MeasurementBuffer(tmp_path / "b.db")
    assert buffer.last_id() == 0
    buffer.append_many([(f"t/{i}", f"m{i}".encode(), i) for i in range(5)], session=1)
    assert buffer.depth == 5
    assert buffer.last_id() == buffer.peek(5)[-1].id
    first = buffer.peek(3)
    assert [m.payload for m in first] == [b"m0", b"m1", b"m2"]
    assert {m.session for m in first} == {1}
    buffer.ack([m.id for m in first])
    assert buffer.depth == 2
    assert [m.topic for m in buffer.peek(10)] == ["t/3", "t/4"]
    buffer.ack([first[0].id])  # acking twice changes nothing
    assert buffer.depth == 2
    buffer.close()


def test_full_buffer_drops_the_oldest_and_counts(tmp_path):
    buffer = MeasurementBuffer(tmp_path / "b.db", max_messages=10)
    for batch in range(4):
        buffer.append_many([("t", f"{batch}-{i}".encode(), 4 * batch + i) for i in range(4)], session=1)
    assert buffer.depth == 10
    assert buffer.dropped == 6
    assert [m.payload for m in buffer.peek(2)] == [b"1-2", b"1-3"]
    buffer.close()
    reopened = MeasurementBuffer(tmp_path / "b.db", max_messages=10)
    assert (reopened.depth, reopened.dropped) == (10, 6)


def test_sessions_increase_across_restarts_and_a_deleted_file(tmp_path):
    path = tmp_path / "b.db"
    first = MeasurementBuffer(path).next_session()
    assert first >= int(time.time()) - 5  # never below the wall clock's seconds
    buffer = MeasurementBuffer(path)
    sessions = [first, buffer.next_session(), buffer.next_session()]
    assert sessions == sorted(set(sessions))  # strictly increasing
    buffer.close()
    for leftover in tmp_path.glob("b.db*"):
        if not leftover.name.endswith(".session"):
            leftover.unlink()
    assert MeasurementBuffer(path).next_session() > sessions[-1]  # the database is gone, the number is not
    (tmp_path / "b.db.session").unlink()
    with pytest.MonkeyPatch.context() as patch:  # a clock set back as well: only the new file is left
        patch.setattr(time, "time", lambda: 1.0)
        assert MeasurementBuffer(path).next_session() > sessions[-1]


def test_confirm_deletes_exactly_the_ranges_given(tmp_path):
    buffer = MeasurementBuffer(tmp_path / "b.db")
    buffer.append_many([("t", f"a{i}".encode(), i) for i in range(10)], session=7)
    buffer.append_many([("t", f"b{i}".encode(), i) for i in range(3)], session=8)
    assert buffer.held_from(7) == 0
    assert buffer.confirm([(7, 0, 3), (7, 6, 6), (8, 1, 1), (9, 0, 100)]) == 6
    assert buffer.depth == 7
    assert [(m.session, m.seq) for m in buffer.peek(100)] == [
        (7, 4),
        (7, 5),
        (7, 7),
        (7, 8),
        (7, 9),
        (8, 0),
        (8, 2),
    ]
    assert buffer.confirm([(7, 0, 3)]) == 0  # confirming twice changes nothing
    assert buffer.held_from(7) == 4
    assert buffer.held_from(9) is None


def test_a_buffer_from_before_confirmations_gets_its_sequence_numbers(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "payload BLOB NOT NULL, session INTEGER NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    db.executemany(
        "INSERT INTO messages (topic, payload, session) VALUES (?, ?, ?)",
        [("t", b'{"seq": 41, "session": 3}', 3), ("t", b"not json", 3)],
    )
    db.commit()
    db.close()
    buffer = MeasurementBuffer(path)
    assert [m.seq for m in buffer.peek(10)] == [41, None]
    assert buffer.confirm([(3, 41, 41)]) == 1


def test_a_deleted_buffer_file_is_noticed_and_its_rows_move_to_a_new_one(tmp_path):
    path = tmp_path / "b.db"
    buffer = MeasurementBuffer(path)
    buffer.append_many([("t", f"m{i}".encode(), i) for i in range(5)], session=1)
    assert not buffer.replaced()
    path.unlink()
    assert buffer.replaced()
    assert buffer.reopen() == 5
    assert not buffer.replaced()
    buffer.append_many([("t", b"m5", 5)], session=1)
    buffer.close()
    again = MeasurementBuffer(path)  # what a restart finds at the path
    assert [m.payload for m in again.peek(10)] == [f"m{i}".encode() for i in range(6)]


def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BufferError, match=rf"buffer {path} cannot be used: .*move it aside"):
        MeasurementBuffer(path)


def test_kill_9_loses_nothing_committed(tmp_path):
    """A writer killed with SIGKILL mid-stream: every batch it reported committed is there, in order."""
    path = tmp_path / "b.db"
    script = textwrap.dedent(f"""
        import sys
        from energyhub.edge.buffer import MeasurementBuffer
        buffer = MeasurementBuffer({str(path)!r})
        n = 0
        while True:
            buffer.append_many([("t", str(n + i).encode(), n + i) for i in range(50)], session=1)
            n += 50
            print(n, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = 0
    for line in proc.stdout:
        committed = int(line)
        if committed >= 5_000:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    buffer = MeasurementBuffer(path)
    payloads = [int(m.payload) for m in buffer.peek(10**6)]
    assert len(payloads) >= committed
    assert payloads == list(range(len(payloads)))  # in order, no gap, no duplicate


def test_appends_from_a_thread_while_acking_keep_count_and_order(tmp_path):
    """The agent appends from a worker thread while its publish loop peeks and acks on the same connection."""
    import threading

    buffer = MeasurementBuffer(tmp_path / "b.db")
    batches, per_batch = 200, 10

    def writer() -> None:
        for b in range(batches):
            buffer.append_many(
                [("t", f"{b}-{i}".encode(), b * per_batch + i) for i in range(per_batch)], session=1
            )

    thread = threading.Thread(target=writer)
    thread.start()
    seen: list[bytes] = []
    after = 0
    while thread.is_alive() or buffer.peek(1, after_id=after):
        got = buffer.peek(7, after_id=after)
        if got:
            seen.extend(m.payload for m in got)
            after = got[-1].id
            buffer.ack([m.id for m in got])
    thread.join()
    assert seen == [f"{b}-{i}".encode() for b in range(batches) for i in range(per_batch)]
    assert buffer.depth == 0
    buffer.close()
