"""perf_analyzer against a served ensemble, and Triton's statistics around it; and the measuring every
bench shares: interleaved rounds whose order rotates, each figure's spread, the sample request.

perf_analyzer (the real binary, shipped in the tritonclient wheel) needs its ``--input-data`` JSON with
BYTES tensors as base64 of a 4-byte little-endian length followed by the bytes, and two libraries the
wheel does not bring: libb64 (apt) and the CUDA runtime (the ``nvidia-cuda-runtime-cu12`` wheel, even
for a CPU server). Everything here is plain files and processes, so it runs the same against any
Triton.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from triton_inpaint.api.commands import CommandError, ExitCode

SEED = 7  # every bench's sample request is made with this seed


class PerfAnalyzerError(CommandError):
    """perf_analyzer is missing, cannot start, or failed; the message says which and what to do (the
    code: NOT_INSTALLED for a missing program or library, UNAVAILABLE for a run that failed)."""

    def __init__(self, message: str, code: ExitCode = ExitCode.UNAVAILABLE) -> None:
        super().__init__(message, code)


def bytes_entry(data: bytes) -> dict[str, Any]:
    """A BYTES element of shape [1] as perf_analyzer's ``--input-data`` JSON wants it."""
    return {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode("ascii"), "shape": [1]}


def input_data(values: dict[str, Any]) -> dict[str, Any]:
    """``--input-data`` JSON for one request: bytes as length-prefixed base64, text and numbers as
    content."""
    entry = {}
    for name, value in values.items():
        if isinstance(value, bytes):
            entry[name] = bytes_entry(value)
        else:
            entry[name] = {"content": [value], "shape": [1]}
    return {"data": [entry]}


def binary() -> Path:
    """The perf_analyzer of this environment (next to its Python)."""
    found = Path(sys.executable).parent / "perf_analyzer"
    if found.is_file():
        return found
    which = shutil.which("perf_analyzer")
    if which is None:
        raise PerfAnalyzerError(
            "perf_analyzer not found; it comes with the tritonclient wheel", ExitCode.NOT_INSTALLED
        )
    return Path(which)


def environment() -> dict[str, str]:
    """LD_LIBRARY_PATH with the CUDA runtime library perf_analyzer links (from its wheel)."""
    env = dict(os.environ)
    try:
        import nvidia.cuda_runtime as runtime  # the nvidia-cuda-runtime-cu12 wheel (the [bench] extra)
    except ImportError as exc:
        raise PerfAnalyzerError(
            "perf_analyzer needs libcudart.so.12: pip install -e '.[bench]' (nvidia-cuda-runtime-cu12)",
            ExitCode.NOT_INSTALLED,
        ) from exc
    lib = Path(next(iter(runtime.__path__))) / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(lib), env.get("LD_LIBRARY_PATH", "")]))
    return env


UNBOUNDED_STABILITY_PERCENTAGE = 100_000.0  # max/min within 1000x: any three windows pass


def run_perf_analyzer(
    model: str,
    grpc_url: str,
    data_file: Path,
    concurrency: int,
    requests_per_window: int,
    out_csv: Path,
    timeout: float,
    stability_percentage: float = 50.0,
) -> dict[str, float | bool]:
    """One concurrency level: throughput (requests/s) and client latencies (ms), from perf_analyzer's
    CSV, averaged over three windows of ``requests_per_window`` requests; ``stable`` says whether
    those windows agreed within ``stability_percentage``.

    CPU inpainting is slow and noisy, hence 50% rather than perf_analyzer's 10%. On a shared 2-core
    machine even that fails at random ("Failed to obtain stable measurement"); the level is then
    measured again with a bound that any three windows meet, and reported as not stable, rather than
    failing the whole run. (``--request-count``, which skips the search, is no way out: its
    requests/s comes out as the count over whole seconds, e.g. 6.0 or 12.0.)"""

    def measure(percentage: float) -> subprocess.CompletedProcess[str]:
        command = [
            str(binary()), "-m", model, "-u", grpc_url, "-i", "grpc", "--input-data", str(data_file),
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-mode", "count_windows", "--measurement-request-count", str(requests_per_window),
            "--stability-percentage", f"{percentage:g}", "--max-trials", "3",
            "-f", str(out_csv), "--verbose-csv",
        ]  # fmt: skip
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment())
        except subprocess.TimeoutExpired as exc:
            raise PerfAnalyzerError(
                f"perf_analyzer at concurrency {concurrency} took over {timeout:g} s"
            ) from exc

    done = measure(stability_percentage)
    stable = "Failed to obtain stable measurement" not in done.stdout + done.stderr
    if not stable:
        done = measure(UNBOUNDED_STABILITY_PERCENTAGE)
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        if "libb64" in done.stderr:
            missing = "perf_analyzer cannot start: install libb64 (apt-get install -y libb64-0d)"
            raise PerfAnalyzerError(missing, ExitCode.NOT_INSTALLED)
        raise PerfAnalyzerError("perf_analyzer failed: " + " | ".join(detail))
    with out_csv.open() as handle:
        row = next(csv.DictReader(handle))
    return {
        "throughput_rps": float(row["Inferences/Second"]),
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p90_ms": float(row["p90 latency"]) / 1000,
        "p95_ms": float(row["p95 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "avg_ms": float(row["Avg latency"]) / 1000,
        "stable": stable,
    }


def model_statistics(grpc_url: str) -> dict[str, dict[str, int]]:
    """Per model: requests, executions, inferences (batch rows) and the queue and compute times (ns)
    Triton has counted since it started."""
    client = grpcclient.InferenceServerClient(grpc_url)
    stats = client.get_inference_statistics(as_json=True).get("model_stats", [])
    result = {}
    for model in stats:
        inference = model.get("inference_stats", {})

        def ns(part: str, inference: dict = inference) -> int:
            return int(inference.get(part, {}).get("ns", 0))

        result[model["name"]] = {
            "requests": int(inference.get("success", {}).get("count", 0)),
            "executions": int(model.get("execution_count", 0)),
            "inferences": int(model.get("inference_count", 0)),
            "queue_ns": ns("queue"),
            "compute_ns": ns("compute_input") + ns("compute_infer") + ns("compute_output"),
        }
    return result


def add_counts(
    total: dict[str, dict[str, int]], before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> None:
    """Add what each model counted between two snapshots to ``total`` (several runs of one level)."""
    for name, now in after.items():
        was = before.get(name, {})
        into = total.setdefault(name, dict.fromkeys(now, 0))
        for key, value in now.items():
            into[key] += value - was.get(key, 0)


def statistics_delta(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, float]]:
    """What each model did between two snapshots: per request, queue and compute in ms, and the batch
    its executions achieved (inferences per execution)."""
    delta = {}
    for name, now in after.items():
        was = before.get(name, {})
        diff = {key: now[key] - was.get(key, 0) for key in now}
        if diff["requests"] <= 0:
            continue
        delta[name] = {
            "requests": diff["requests"],
            "queue_ms_per_request": diff["queue_ns"] / diff["requests"] / 1e6,
            "compute_ms_per_request": diff["compute_ns"] / diff["requests"] / 1e6,
            "batch_per_execution": diff["inferences"] / max(diff["executions"], 1),
        }
    return delta


def write_input_data(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(json.dumps(input_data(values)))
    return path


def rotated(items: list[Any] | tuple[Any, ...], number: int) -> list[Any]:
    """Round ``number``'s order: each round starts one later, so none always runs first or last."""
    start = number % len(items)
    return [*items[start:], *items[:start]]


def spread(values: list[float]) -> dict[str, float]:
    """A figure over its runs: the median and the range."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def sample_request(native: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and a mask at the model's native size: a gradient with noise, an ellipse to fill."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:native, 0:native]
    image = np.stack([x * 255 // native, y * 255 // native, (x + y) * 127 // native], axis=-1)
    image = np.clip(image + rng.integers(-20, 20, image.shape), 0, 255).astype(np.uint8)
    mask = ((x - native / 2) / (native / 3)) ** 2 + ((y - native / 2) / (native / 4)) ** 2 <= 1
    return image, (mask * 255).astype(np.uint8)


def interleaved(
    methods: dict[str, Callable[[], Any]],
    rounds: int,
    tick: Callable[[str], None] = lambda _: None,
    warm_up: bool = True,
) -> dict[str, list[float]]:
    """Each method once to warm up (unless ``warm_up`` is false: a call takes minutes at real size),
    then ``rounds`` rounds, the order rotating each round."""
    for name, call in methods.items() if warm_up else ():
        call()
        tick(f"warm-up {name}")
    times: dict[str, list[float]] = {name: [] for name in methods}
    for number in range(rounds):
        for name in rotated(list(methods), number):
            started = time.perf_counter()
            methods[name]()
            times[name].append(time.perf_counter() - started)
            tick(f"round {number + 1}/{rounds} {name}")
    return times
