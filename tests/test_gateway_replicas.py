"""Several gateway replicas on one PostgreSQL database and one bucket, all real processes started here:
async tasks sent to either are run by whichever is free, exactly once, survive a replica killed with
SIGKILL and a database restart, and every result is readable from every replica."""

from __future__ import annotations

import base64
import signal
import time
import uuid

import psycopg
import pytest

from tests.conftest import MODEL
from tests.gateway_process import GatewayProcess
from tests.helpers import irregular_mask, make_image, png_bytes
from tests.s3_server import CREDENTIALS, S3Server

IMAGE = base64.b64encode(png_bytes(make_image(96, 64, seed=5))).decode()
MASK = base64.b64encode(png_bytes(irregular_mask(96, 64))).decode()
TASKS = 50  # 30 sent before the database restart, 20 after it
BEFORE_RESTART = 30
LEASE = 4.0  # seconds: a killed replica's task is taken over this long after its last heartbeat


@pytest.fixture(scope="module")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture
def shared(s3, database_url, monkeypatch, tmp_path):
    """(the options every replica gets, the database URL): one database, one bucket."""
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    bucket = f"images-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    options = (
        "--database", database_url, "--image-store", f"s3://{bucket}", "--s3-endpoint", s3.url,
        "--workers", "2", "--task-lease", str(LEASE), "--rate", "100000", "--concurrency", "64",
    )  # fmt: skip
    return options, database_url


def inference(seed: int, task_uuid: str | None = None, steps: int = 2) -> dict:
    return {
        "taskType": "imageInference", "taskUUID": task_uuid or str(uuid.uuid4()), "deliveryMethod": "async",
        "model": MODEL, "positivePrompt": "a bowl of fruit", "steps": steps, "seed": seed,
        "seedImage": IMAGE, "maskImage": MASK,
    }  # fmt: skip


def rows(database_url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(database_url) as connection:
        return connection.execute(sql, params).fetchall()


def wait_for(condition, timeout: float, what: str, explain=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{explain()}"
        time.sleep(0.2)


@pytest.mark.server
def test_two_replicas_share_the_queue_survive_a_sigkill_and_a_database_restart(
    triton_server, shared, postgres_server, tmp_path
):
    options, database_url = shared
    first = GatewayProcess(triton_server.grpc_url, tmp_path / "a", *options).start()
    second = GatewayProcess(triton_server.grpc_url, tmp_path / "b", *options).start()
    survivor = None

    def explain() -> str:
        """What a failed wait shows: the unfinished tasks and both replicas' last log lines."""
        now = "extract(epoch from clock_timestamp())"
        left = rows(database_url, f"SELECT id, status, attempts, owner, lease_until - {now}, not_before "
                    f"- {now}, error FROM tasks WHERE status IN ('pending', 'running')")  # fmt: skip
        logs = "".join(f"\n{name} replica's log:\n" + "\n".join(replica.lines[-30:])
                       for name, replica in (("first", first), ("second", second)))  # fmt: skip
        return f"unfinished: {left}{logs}"

    try:
        sent = []

        def send(tasks: list[dict], replicas: tuple = (first, second)) -> None:
            for index, task in enumerate(tasks):  # across the replicas
                status, body = replicas[index % len(replicas)].post("/v1", [task])
                assert status == 200 and body["data"][0]["status"] == "processing", body
            sent.extend(tasks)

        send([inference(seed) for seed in range(BEFORE_RESTART)])

        # The same task sent again, to the other replica (a client retrying): still one task. The same
        # UUID with other content is refused.
        status, body = first.post("/v1", [sent[1]])
        assert status == 200 and body["data"][0]["status"] in ("processing", "success"), body
        status, body = second.post("/v1", [inference(999, sent[1]["taskUUID"])])
        assert status == 400 and "already used" in body["errors"][0]["message"], body
        assert rows(database_url, "SELECT count(*) FROM tasks")[0][0] == BEFORE_RESTART

        # The database restarts mid-run: both replicas say not-ready and refuse work with a 503, then
        # answer again without being restarted themselves.
        completed = "SELECT count(*) FROM tasks WHERE status = 'completed'"
        wait_for(lambda: rows(database_url, completed)[0][0] >= 4, 120, "the first tasks")
        postgres_server.stop()
        try:
            for replica in (first, second):
                status, ready = replica.get_json("/readyz")
                print(f"database down: {status} {ready['reason'][:100]}")
                assert status == 503 and "task database" in ready["reason"], ready
            status, body = second.post("/v1", [inference(1000)])
            assert status == 503 and body["errors"][0]["code"] == "serviceUnavailable", body
        finally:
            postgres_server.start()
        for replica in (first, second):
            wait_for(lambda replica=replica: replica.get_json("/readyz")[0] == 200, 30, "readiness")

        # One replica is killed while it holds a task: the other takes that task over after its lease.
        # New, longer tasks, so that there is work to be killed in however fast the first batch went.
        # The second replica is paused (SIGSTOP) meanwhile: after the restart the first one's workers
        # may still be in their back-off, and the second would otherwise run the whole batch first. The
        # first is stopped too before its tasks are read, so that what it holds cannot change between
        # that read and the SIGKILL.
        second.process.send_signal(signal.SIGSTOP)
        try:
            send([inference(seed, steps=6) for seed in range(BEFORE_RESTART, TASKS)], (first,))
            mine = f"%:{first.pid}:%"
            held_now = "SELECT id FROM tasks WHERE status = 'running' AND owner LIKE %s"
            held: list[str] = []
            while not held:
                wait_for(lambda: rows(database_url, held_now, mine), 120, "the first replica to run a task",
                         explain)  # fmt: skip
                first.process.send_signal(signal.SIGSTOP)
                held = [row[0] for row in rows(database_url, held_now, mine)]
                if not held:  # it finished between the two reads: let it claim the next one
                    first.process.send_signal(signal.SIGCONT)
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=10)
        finally:
            second.process.send_signal(signal.SIGCONT)
        killed_at = time.monotonic()

        unfinished = "SELECT count(*) FROM tasks WHERE status IN ('pending', 'running')"

        wait_for(lambda: rows(database_url, unfinished)[0][0] == 0, 300, "every task to finish", explain)
        print(f"all {TASKS} finished {time.monotonic() - killed_at:.1f} s after the SIGKILL")
        outcomes = rows(database_url, "SELECT id, status, attempts, owner FROM tasks")
        assert {status for _, status, _, _ in outcomes} == {"completed"}, outcomes
        assert all(owner is None for *_, owner in outcomes), "nothing is left held"
        taken_over = {task_id: attempts for task_id, _, attempts, _ in outcomes if task_id in held}
        print(f"held by the killed replica: {taken_over} (attempts)")
        assert taken_over and all(attempts >= 2 for attempts in taken_over.values())

        # Every result, read through the surviving replica and through a new one on the same store.
        survivor = GatewayProcess(triton_server.grpc_url, tmp_path / "c", *options).start()
        for batch in range(0, TASKS, 10):
            polls = [
                {"taskType": "getResponse", "taskUUID": task["taskUUID"]} for task in sent[batch : batch + 10]
            ]
            status, body = second.post("/v1", polls)
            assert status == 200 and len(body["data"]) == 10, body
            for item in body["data"]:
                assert item["status"] == "success", item
                path = item["imageURL"].split("/images/", 1)[1]
                served = [replica.request("GET", f"/images/{path}") for replica in (second, survivor)]
                assert [status for status, _, _ in served] == [200, 200]
                assert served[0][2] == served[1][2] and served[0][2][:8] == b"\x89PNG\r\n\x1a\n"
        seeds = sorted(item["seed"] for item in second.post("/v1", [{"taskType": "getResponse",
                       "taskUUID": task["taskUUID"]} for task in sent[:10]])[1]["data"])  # fmt: skip
        assert seeds == list(range(10))  # each task's own result, once
    finally:
        for replica in (first, second, survivor):
            if replica is not None:
                replica.stop()
