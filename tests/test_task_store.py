"""The task store's queue on both backends: SQLite (one machine) and a real PostgreSQL server (shared by
replicas). Claims, leases, heartbeats, takeovers, attempts, idempotent creation, and a database that
goes away and comes back."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from triton_inpaint.gateway.store.records import SqliteTaskStore, TaskExists, TaskStoreUnavailable


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SqliteTaskStore(tmp_path / "gateway.sqlite3")
        return
    from triton_inpaint.gateway.store.postgres import PostgresTaskStore

    opened = PostgresTaskStore(request.getfixturevalue("database_url"))
    yield opened
    opened.close()


def test_a_task_is_claimed_once_renewed_and_finished_only_by_its_holder(store):
    task = store.create_task("flux_inpainting", {"resolution": 512}, "t1")
    assert (task.status, task.attempts, task.args) == ("pending", 0, {"resolution": 512})
    claimed = store.claim_task("worker-a", lease_seconds=30)
    assert (claimed.id, claimed.status, claimed.attempts) == ("t1", "running", 1)
    assert store.claim_task("worker-b", lease_seconds=30) is None  # held, lease not over
    assert store.heartbeat({"t1": "worker-a"}, 30) == 1
    assert store.heartbeat({"t1": "worker-b"}, 30) == 0 and store.heartbeat({}, 30) == 0
    assert not store.finish_task("t1", "worker-b", "completed", {"output": []}, None)  # not its task
    assert store.finish_task("t1", "worker-a", "completed", {"output": [1]}, None)
    done = store.get_task("t1")
    assert (done.status, done.progress, done.result) == ("completed", 1.0, {"output": [1]})
    assert not store.finish_task("t1", "worker-a", "failed", None, "late")  # written once
    assert store.claim_task("worker-a", 30) is None and store.unfinished_tasks() == []


def test_a_lease_that_runs_out_is_taken_over_and_the_old_holder_cannot_write(store):
    store.create_task("flux_inpainting", {}, "t1")
    assert store.claim_task("dead-worker", lease_seconds=0.3).attempts == 1
    # No heartbeat names it (the worker died, or gave up writing its outcome): the lease runs out even
    # while that worker's process renews the other tasks it runs.
    store.create_task("flux_inpainting", {}, "t2")
    assert store.claim_task("dead-worker", lease_seconds=0.3).id == "t2"
    time.sleep(0.5)
    assert store.heartbeat({"t2": "dead-worker"}, 30) == 1
    taken = store.claim_task("live-worker", lease_seconds=30)
    assert (taken.id, taken.attempts) == ("t1", 2)
    assert not store.finish_task("t1", "dead-worker", "completed", {"output": ["stale"]}, None)
    assert store.finish_task("t1", "live-worker", "completed", {"output": ["fresh"]}, None)
    assert store.get_task("t1").result == {"output": ["fresh"]}


def test_a_release_waits_gives_the_attempt_back_and_tasks_come_oldest_first(store):
    store.create_task("flux_inpainting", {}, "old")
    time.sleep(0.01)
    store.create_task("flux_inpainting", {}, "new")
    first = store.claim_task("w", 30)
    assert first.id == "old"
    assert store.release_task("old", "w", "Triton at x is not reachable", delay=0.4)
    assert not store.release_task("old", "w", "twice", delay=0)  # no longer held
    assert store.claim_task("w", 30).id == "new"  # "old" waits out its delay
    assert store.claim_task("w", 30) is None
    time.sleep(0.5)
    again = store.claim_task("w", 30)
    assert (again.id, again.attempts, again.error) == ("old", 1, "Triton at x is not reachable")
    assert store.release_owned("w") == 2  # a gateway shutting down gives back what it runs
    assert {task.status for task in store.unfinished_tasks()} == {"pending"}


def test_the_same_id_makes_one_task_and_counts_are_per_prefix(store):
    store.create_task("runware", {"n": 1}, "rw-aaaa-1", digest="d1")
    with pytest.raises(TaskExists) as raised:
        store.create_task("runware", {"n": 2}, "rw-aaaa-1", digest="d2")
    assert (raised.value.record.args, raised.value.record.digest) == ({"n": 1}, "d1")
    store.create_task("runware", {}, "rw-aaaa-2")
    store.create_task("runware", {}, "rw-bbbb-1")
    assert store.count_unfinished("rw-aaaa-") == 2 and store.count_unfinished("rw-bbbb-") == 1
    assert store.count_unfinished("rw-a%") == 0  # a wildcard in a prefix is not one


def test_concurrent_claims_never_hand_one_task_to_two_workers(store):
    for index in range(40):
        store.create_task("flux_inpainting", {}, f"t{index:02d}")
    claimed: list[str] = []
    lock = threading.Lock()

    def drain(owner: str) -> None:
        while (task := store.claim_task(owner, 30)) is not None:
            with lock:
                claimed.append(task.id)
            store.finish_task(task.id, owner, "completed", {}, None)

    threads = [threading.Thread(target=drain, args=(f"w{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(claimed) == [f"t{index:02d}" for index in range(40)]  # each once, none lost


def test_the_image_index(store):
    store.add_image("u1", "png", 10)
    assert store.image_extension("u1") == "png" and store.image_extension("u2") is None
    assert store.remove_image("u1") == "png" and store.remove_image("u1") is None


def test_an_older_sqlite_database_gains_the_queue_columns(tmp_path: Path):
    path = tmp_path / "gateway.sqlite3"
    with sqlite3.connect(path) as db:  # the first release's schema, with a task in it
        db.execute(
            "CREATE TABLE tasks (id TEXT PRIMARY KEY, tool TEXT NOT NULL, args TEXT NOT NULL, status TEXT "
            "NOT NULL, progress REAL NOT NULL, result TEXT, error TEXT, created REAL NOT NULL, updated REAL "
            "NOT NULL)"
        )
        db.execute(
            "INSERT INTO tasks VALUES ('old', 'flux_inpainting', '{}', 'running', 0.1, NULL, NULL, 1, 1)"
        )
    store = SqliteTaskStore(path)
    assert store.expire_leases() == 1  # left running by the stopped gateway: due again at once
    assert store.claim_task("w", 30).id == "old"


def test_a_stopped_postgres_is_unavailable_then_answers_again_without_a_new_store(
    postgres_server, database_url, caplog
):
    from triton_inpaint.gateway.store.postgres import PostgresTaskStore

    caplog.set_level(logging.WARNING, logger="psycopg.pool")
    store = PostgresTaskStore(database_url, timeout=3.0)
    try:
        store.create_task("flux_inpainting", {}, "t1")
        postgres_server.stop()
        try:
            with pytest.raises(TaskStoreUnavailable, match=r"postgresql://postgres@127\.0\.0\.1"):
                store.check()
            with pytest.raises(TaskStoreUnavailable):
                store.claim_task("w", 30)
        finally:
            postgres_server.start()
        deadline = time.monotonic() + 20
        while True:  # the pool replaces the connections the restart dropped
            try:
                store.check()
                break
            except TaskStoreUnavailable:
                assert time.monotonic() < deadline, "the store did not reconnect"
                time.sleep(0.2)
        assert store.claim_task("w", 30).id == "t1"
        # The pool's reconnection attempts during the outage: one line for all of them.
        failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("error connecting")]
        assert len(failures) <= 1 and all("\n" not in line for line in failures), failures
    finally:
        store.close()


def test_a_task_stored_by_one_replica_wakes_the_others_also_after_a_database_restart(
    postgres_server, database_url
):
    from triton_inpaint.gateway.store.postgres import PostgresTaskStore

    storing, idle = PostgresTaskStore(database_url), PostgresTaskStore(database_url, timeout=3.0)
    woken = threading.Event()
    try:
        idle.on_new_task(woken.set)
        for restart in (False, True):
            if restart:
                postgres_server.stop()
                postgres_server.start()
            assert woken.wait(30), "not listening"  # the wake that starts (or resumes) listening
            woken.clear()
            sent = time.monotonic()
            storing.create_task("flux_inpainting", {}, f"t{restart}")
            assert woken.wait(10), "the other replica was not told"
            print(f"the other replica was told after {1000 * (time.monotonic() - sent):.1f} ms", restart)
            woken.clear()
    finally:
        storing.close()
        idle.close()


def test_reconnection_warnings_are_one_line_per_outage_then_one_a_minute():
    from triton_inpaint.gateway.store.postgres import OutageLogFilter

    now = [0.0]
    thinned = OutageLogFilter(every=60, clock=lambda: now[0])

    def passed(message: str, *args: object) -> str | None:
        record = logging.LogRecord("psycopg.pool", logging.WARNING, __file__, 1, message, args, None)
        return record.getMessage() if thinned.filter(record) else None

    refused = "connection failed: Connection refused\n\tIs the server running?"
    assert passed("error connecting in %r: %s", "pool", refused) == (
        "error connecting in 'pool': connection failed: Connection refused Is the server running?"
    )
    for now[0] in (1, 3, 7, 15, 31):  # psycopg_pool's backoff
        assert passed("error connecting in %r: %s", "pool", refused) is None
    assert passed("growing pool %r to %s", "pool", 2) == "growing pool 'pool' to 2"  # other messages pass
    now[0] = 61
    assert passed("error connecting in %r: %s", "pool", refused).endswith(
        "(5 more failed attempts since the last one logged)"
    )


def test_shared_limits_hold_across_two_gateways_and_slots_of_a_dead_one_lapse(database_url):
    from triton_inpaint.gateway.store.postgres import PostgresTaskStore, SharedKeyLimits

    stores = [PostgresTaskStore(database_url), PostgresTaskStore(database_url)]
    first, second = (SharedKeyLimits(store, concurrency=2, per_minute=3) for store in stores)
    try:
        assert first.acquire("key:a") is None and second.acquire("key:a") is None
        assert first.acquire("key:a") == 1.0  # two running, one on each gateway
        assert second.acquire("key:b") is None  # other keys are not affected
        second.release("key:a")
        assert first.acquire("key:a") is None  # the third request of the minute
        first.release("key:a")
        first.release("key:a")
        assert 1.0 <= second.acquire("key:a") <= 60.0  # three in the last minute, counted together
        # A gateway that died holds its slots only until they are no longer renewed.
        third = SharedKeyLimits(stores[0], concurrency=1, per_minute=100)
        third.SLOT_SECONDS = 0.3
        third.close()  # no renewals: as if its process had died
        assert third.acquire("key:c") is None and third.acquire("key:c") == 1.0
        time.sleep(0.5)
        assert third.acquire("key:c") is None
    finally:
        for limits in (first, second):
            limits.close()
        for store in stores:
            store.close()
