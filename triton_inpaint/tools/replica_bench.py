"""``triton-inpaint bench-replicas``: async-task throughput of gateway replicas sharing a queue, against
one gateway with one worker, on the same Triton, in one run.

Each setup gets the same batch of async ``imageInference`` tasks (deliveryMethod "async"), sent
round-robin to its gateways; the clock runs from the first send until ``getResponse`` shows every task
finished. Setups run in rounds, their order rotating, so no setup always meets a warmer machine; the
figure is each setup's median tasks per second, and the ratios to the single gateway are taken within
the run (these machines are too noisy for absolute figures to compare across runs).

Setups: one gateway with one worker on its own SQLite file (the embedded default), the same on
PostgreSQL (what the shared store costs), and ``--replicas`` gateways with ``--workers`` workers each on
one PostgreSQL database (a throwaway local server unless ``--database`` names one). The replicas of a
setup share one image folder; in a cluster that is the S3 bucket.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STEPS = 4
PROMPT = "a red brick wall"


def _log(message: str) -> None:
    print(f"[bench-replicas] {message}", flush=True)


@dataclass(frozen=True)
class Setup:
    name: str
    replicas: int
    workers: int
    shared: bool  # PostgreSQL (else each gateway's own SQLite file)


def setups(replicas: int, workers: int) -> list[Setup]:
    return [
        Setup("1 gateway x 1 worker, SQLite", 1, 1, False),
        Setup("1 gateway x 1 worker, PostgreSQL", 1, 1, True),
        Setup(f"{replicas} gateways x {workers} workers, PostgreSQL", replicas, workers, True),
    ]


def _post(url: str, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    import urllib3

    response = urllib3.request("POST", f"{url}/v1", json=tasks, timeout=urllib3.Timeout(30.0, read=300.0))
    body = json.loads(response.data)
    if response.status != 200:
        raise RuntimeError(f"the gateway answered {response.status}: {body}")
    return body


def run_batch(urls: list[str], model: str, image: str, mask: str, tasks: int, timeout: float) -> float:
    """Seconds from the first send until every task finished (all must succeed)."""
    sent = [
        {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "deliveryMethod": "async",
         "model": model, "positivePrompt": PROMPT, "steps": STEPS, "seed": index, "seedImage": image,
         "maskImage": mask}
        for index in range(tasks)
    ]  # fmt: skip
    started = time.perf_counter()
    for index, task in enumerate(sent):
        _post(urls[index % len(urls)], [task])
    waiting = [task["taskUUID"] for task in sent]
    deadline = time.monotonic() + timeout
    while waiting:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} tasks did not finish in {timeout:g} s")
        time.sleep(0.05)
        done: set[str] = set()
        for batch in range(0, len(waiting), 16):  # 16 tasks in one POST at most
            polls = [{"taskType": "getResponse", "taskUUID": u} for u in waiting[batch : batch + 16]]
            items = _post(urls[batch // 16 % len(urls)], polls)["data"]
            done |= {item["taskUUID"] for item in items if item.get("status") == "success"}
        waiting = [u for u in waiting if u not in done]
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> dict[str, Any]:
    from triton_inpaint.api.imaging import encode_image, encode_mask
    from triton_inpaint.gateway.launcher import GatewayServer
    from triton_inpaint.networks.runners import SD_TENSORS
    from triton_inpaint.server.process import TritonServer, free_port, with_builtin
    from triton_inpaint.tools.benchmark import machine, prepare_model, sample_request

    args.out.mkdir(parents=True, exist_ok=True)
    name, _, repository = prepare_model("tiny", args.work)
    image, mask = sample_request(64)
    image_b64 = base64.b64encode(encode_image(image)).decode()
    mask_b64 = base64.b64encode(encode_mask(mask)).decode()
    models = [f"inpaint_{name}", *(f"{name}_{role}" for role in SD_TENSORS)]
    server = TritonServer(with_builtin([repository]), free_port(), free_port(), free_port(), models=models)
    database = None
    plan = setups(args.replicas, args.workers)
    seconds: dict[str, list[float]] = {setup.name: [] for setup in plan}
    _log("starting Triton and the database")
    server.start(timeout=600)
    try:
        url = args.database
        if not url:
            from triton_inpaint.gateway.store.local_postgres import PostgresServer

            database = PostgresServer().start()
        for round_index in range(args.rounds):
            order = plan[round_index % len(plan) :] + plan[: round_index % len(plan)]
            for setup in order:
                data = (
                    args.work / "replicas" / f"r{round_index}-{setup.replicas}x{setup.workers}-{setup.shared}"
                )
                shutil.rmtree(data, ignore_errors=True)
                options = ["--workers", str(setup.workers), "--rate", "100000", "--concurrency", "256"]
                if setup.shared:
                    # A fresh database per run: no setup's tasks are left for another's workers.
                    db_url = url or database.create_database(f"bench_{uuid.uuid4().hex[:12]}")
                    options += ["--database", db_url]
                gateways = [GatewayServer(server.grpc_url, data, *options) for _ in range(setup.replicas)]
                try:
                    for gateway in gateways:
                        gateway.start()
                    run_batch([g.url for g in gateways], name, image_b64, mask_b64, 2, 600)  # warm-up
                    took = run_batch([g.url for g in gateways], name, image_b64, mask_b64, args.tasks, 1800)
                finally:
                    for gateway in gateways:
                        gateway.stop()
                seconds[setup.name].append(took)
                _log(f"round {round_index + 1}: {setup.name}: {args.tasks} tasks in {took:.2f} s")
    finally:
        server.stop()
        if database is not None:
            database.close()
    rates = {key: args.tasks / statistics.median(values) for key, values in seconds.items()}
    baseline = rates[plan[0].name]
    results = {
        "machine": machine(),
        "model": name,
        "steps": STEPS,
        "tasks": args.tasks,
        "rounds": args.rounds,
        "seconds": seconds,
        "tasks_per_second": rates,
        "over_single_gateway": {key: rate / baseline for key, rate in rates.items()},
    }
    (args.out / "bench-replicas.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"Async tasks: {args.tasks} x tiny model, {STEPS} steps, median of {args.rounds} rounds",
        "",
        "| setup | tasks/s | over 1 gateway x 1 worker (SQLite) |",
        "|---|---:|---:|",
        *(f"| {key} | {rate:.2f} | {rate / baseline:.2f}x |" for key, rate in rates.items()),
    ]
    (args.out / "bench-replicas.md").write_text("\n".join(lines) + "\n")
    return results


def _command(args: argparse.Namespace) -> int:
    least = {"--tasks": (args.tasks, 2), "--rounds": (args.rounds, 1), "--replicas": (args.replicas, 1),
             "--workers": (args.workers, 1)}  # fmt: skip
    for option, (value, minimum) in least.items():
        if value < minimum:
            print(f"error: {option}: must be an integer >= {minimum}, got {value}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    run(args)
    _log(f"wrote bench-replicas.json and .md to {args.out} in {time.perf_counter() - started:.0f} s")
    print((args.out / "bench-replicas.md").read_text())
    return 0


def add_subcommands(subparsers: Any) -> None:
    bench = subparsers.add_parser(
        "bench-replicas",
        help="async-task throughput: gateway replicas x workers on one PostgreSQL queue vs one gateway "
        "with one worker, on the same Triton; writes bench-replicas.json and .md",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--out", type=Path, required=True, help="folder for bench-replicas.json and .md")
    bench.add_argument(
        "--work", type=Path, default=Path("build/bench"), help="checkpoints and models, reused between runs"
    )
    bench.add_argument("--tasks", type=int, default=40, help="async tasks per setup and round")
    bench.add_argument("--rounds", type=int, default=3, help="rounds; the order of the setups rotates")
    bench.add_argument("--replicas", type=int, default=2, help="gateways in the scaled setup")
    bench.add_argument("--workers", type=int, default=2, help="workers per gateway in the scaled setup")
    bench.add_argument(
        "--database",
        default="",
        help="a PostgreSQL URL to use (its tasks table must be empty); default: a throwaway local server",
    )
    bench.set_defaults(handler=_command)
