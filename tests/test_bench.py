"""``triton-inpaint bench --quick`` keeps working: a real run (real Triton, gateway, perf_analyzer) that
writes every file it promises with every figure filled in. No timing is asserted: these machines are too
noisy for that, which is why the command measures ratios side by side."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.server


def _finite_positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The benchmark models, built once for this file's runs."""
    return tmp_path_factory.mktemp("bench-work")


def test_quick_bench_writes_every_figure(tmp_path, work):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "bench", "--quick", "--out", str(out),
         "--work", str(work)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "bench.json").read_text())
    assert results["machine"]["versions"]["tritonclient"] == "2.51.0"
    (model,) = results["models"]
    assert model["model"] == "benchtiny"
    methods = {
        "diffusers",
        "ours_in_process",
        "served_grpc",
        "served_grpc_stream",
        "served_grpc_cached",
        "gateway",
    }
    assert set(model["median_s"]) == methods
    assert all(_finite_positive(value) for value in model["median_s"].values())
    assert all(_finite_positive(value) for value in model["ratios"].values())
    assert _finite_positive(model["cold_start_s"])
    machine = results["machine"]
    assert machine["cpu"] and machine["cores"] >= machine["usable_cores"] >= 1 and machine["memory_gib"] > 0
    for method, values in model["seconds"].items():  # two rounds, each figure with its range
        assert len(values) == 2
        ranged = model["spread_s"][method]
        assert ranged["min"] <= ranged["median"] == model["median_s"][method] <= ranged["max"]
    assert [entry["concurrency"] for entry in model["sweep"]] == [1, 2]
    for entry in model["sweep"]:
        assert len(entry["runs"]) == 2  # each level once in each of the two rotating rounds
        for key in ("throughput_rps", "p50_ms", "p95_ms"):
            assert entry["spread"][key]["min"] <= entry[key] <= entry["spread"][key]["max"]
        for number in (1, 2):
            assert (out / f"perf_benchtiny_c{entry['concurrency']}_r{number}.csv").is_file()
        assert _finite_positive(entry["throughput_rps"]) and entry["p95_ms"] >= entry["p50_ms"] > 0
        assert isinstance(entry["stable"], bool)
        assert entry["unet_rows_per_call"] >= 2.0  # classifier-free guidance: two rows a request at least
        assert {"benchtiny_unet", "benchtiny_denoise", "inpaint_preprocess"} <= set(entry["models"])
    memory = model["memory"]
    assert memory["served_stack_mib"] > memory["weights_mib"] > 0 and memory["gateway_mib"] > 0
    assert {"tritonserver", "benchtiny_unet", "benchtiny_denoise"} <= set(memory["processes_mib"])
    lora = model["lora"]  # the banked adapters' cost, in-process, side by side
    assert (lora["adapters"], lora["rank"]) == (2, 16) and set(lora["median_s"]) == {"plain", "lora"}
    assert _finite_positive(lora["lora_over_plain"])
    assert lora["spread_s"]["lora"]["min"] <= lora["median_s"]["lora"] <= lora["spread_s"]["lora"]["max"]
    # Step caching: served cached against uncached with the image distance beside it; every other
    # request cached under perf_analyzer (the shallow UNet's calls counted); each family in-process.
    assert model["ratios"]["cached_over_served"] > 0 and model["cache_distance"]["max_255"] > 0
    assert [entry["concurrency"] for entry in model["mixed_sweep"]] == [1, 2]
    assert all(entry["shallow_rows_per_call"] >= 2.0 for entry in model["mixed_sweep"])
    families = {entry["family"]: entry for entry in results["step_cache"]}
    assert set(families) == {"sd15-inpaint", "flux-fill"}
    assert (
        families["sd15-inpaint"]["cached_steps"] > 0 and families["sd15-inpaint"]["distance"]["psnr_db"] > 0
    )
    assert all(_finite_positive(entry["cached_over_uncached"]) for entry in families.values())
    report = (out / "bench.md").read_text()
    assert "## Step caching: speed and its price in fidelity" in report and "| tiny flux-fill |" in report
    assert "| benchtiny | 2 |" in report and "served / in-process" in report
    assert "## LoRA adapters' cost" in report and "| benchtiny | 2 x 16 |" in report
    assert machine["cpu"] in report and "median of its runs, with their range" in report
    for plot in ("throughput.png", "latency.png", "time_breakdown.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    # The perf_analyzer input it wrote is the documented format: BYTES as length-prefixed base64.
    data = json.loads((out / "perf_input_benchtiny.json").read_text())["data"][0]
    assert set(data["image"]) == {"b64", "shape"} and data["prompt"]["content"] == ["a red brick wall"]


def test_gpu_session_is_staged_for_the_gpu_machines_python(tmp_path):
    """``bench-gpu --prepare``: Python 3.12 wheels from the package index in parts a device call can
    carry (the working tree goes along), and the calls that install them and measure."""
    from triton_inpaint.tools import gpu_session

    out = tmp_path / "wheels"
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "bench-gpu", "--prepare", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parts = sorted(out.glob("part-*"))
    wheels = [path.name for part in parts for path in part.glob("*.whl")]
    for pin in gpu_session.WHEELS:
        name, version = pin.split("==")
        prefix = f"{name.replace('-', '_')}-{version}-"
        assert any(w.lower().startswith(prefix) for w in wheels), (pin, wheels)
    assert any(w.startswith("triton_inpaint-") for w in wheels)
    assert any(w.startswith("numpy-1.26.4-cp312-") for w in wheels)  # the stubs' numpy, for 3.12
    for part in parts:
        assert sum(path.stat().st_size for path in part.iterdir()) <= gpu_session.PART_LIMIT
    calls = [line for line in done.stdout.splitlines() if "command=" in line]
    assert len(calls) == len(parts) >= 2
    assert "gpu_session run --out" in calls[-1] and "gpu_session run" not in calls[0]


def test_gpu_session_rehearsed_here_runs_bench_gpu_from_its_own_environment(tmp_path):
    """The lent-GPU session with this interpreter in the machine's place: the wheels for it, each part
    installed into the session's environment (which sees this interpreter's packages behind its own,
    as the machine's torch), and ``bench-gpu --device cpu --size tiny`` run from there with a real
    Triton serving the gpu-torch repository: the whole path; its figures say nothing about GPUs."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    env = {**os.environ, "TRITON_INPAINT_GPU_VENV": str(tmp_path / "venv")}

    def session(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "triton_inpaint.tools.gpu_session", *args],
            capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done

    early = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.tools.gpu_session", "run", "--out", str(out)],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=60,
    )  # fmt: skip
    assert early.returncode == 2 and "make their device calls again" in early.stdout
    session("prepare", "--out", str(wheels), "--python", python)
    for part in sorted(wheels.glob("part-*")):
        session("install", str(part))
    session(
        "run", "--out", str(out), "--work", str(tmp_path / "work"), "--",
        "--device", "cpu", "--size", "tiny", "--steps", "2", "--rounds", "1", timeout=900,
    )  # fmt: skip
    packages = (out / "packages.txt").read_text().splitlines()
    assert "numpy==1.26.4" in packages and any(line.startswith("triton-inpaint==") for line in packages)
    assert "served / in-process" in (out / "bench-gpu.log").read_text()
    results = json.loads((out / "bench-gpu.json").read_text())
    assert results["device"] == "cpu" and results["machine"]["gpu"] is None
    assert set(results["median_s"]) == {
        "diffusers_fp16",
        "ours_in_process",
        "served_grpc",
        "served_grpc_cached",
    }
    assert (
        results["cache_distance"]["max_255"] >= 0
        and "Step caching (DeepCache" in (out / "bench-gpu.md").read_text()
    )
    assert all(_finite_positive(value) for value in results["median_s"].values())
    assert all(_finite_positive(value) for value in results["ratios"].values())
    assert all(_finite_positive(value) for value in results["unet_step_ms"].values())
    # fp32 on the CPU: the served gpu-torch models give diffusers' image; the input comes back outside.
    parity = results["parity_fp32_served_vs_diffusers"]
    assert parity["inside_max_255"] <= 1 and parity["outside_exact"]
    report = (out / "bench-gpu.md").read_text()
    assert "served / in-process" in report and "outside exact: True" in report


def test_bench_replicas_measures_every_setup(tmp_path, work):
    """``bench-replicas``: real gateways (one on SQLite; one and two on a throwaway PostgreSQL) draining
    the same async tasks from one real Triton; the figures are there and finite, none is judged."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "triton_inpaint.cli", "bench-replicas", "--tasks", "3", "--rounds", "1",
         "--out", str(out), "--work", str(work)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "bench-replicas.json").read_text())
    assert list(results["tasks_per_second"]) == [
        "1 gateway x 1 worker, SQLite",
        "1 gateway x 1 worker, PostgreSQL",
        "2 gateways x 2 workers, PostgreSQL",
    ]
    assert all(_finite_positive(value) for value in results["tasks_per_second"].values())
    assert results["over_single_gateway"]["1 gateway x 1 worker, SQLite"] == 1.0
    assert "| 2 gateways x 2 workers, PostgreSQL |" in (out / "bench-replicas.md").read_text()


def test_a_level_without_a_stable_measurement_is_measured_again_and_marked(triton_server, tmp_path):
    """perf_analyzer's search for three windows within the bound fails (here: a bound no windows
    meet): the level is measured again, taking the windows as they come, instead of failing the run."""
    from tests.conftest import MODEL
    from tests.helpers import irregular_mask, make_image, png_bytes
    from triton_inpaint.tools import perf

    data = perf.write_input_data(
        tmp_path / "input.json",
        {"image": png_bytes(make_image(64, 64, seed=1)), "mask": png_bytes(irregular_mask(64, 64)),
         "prompt": "a red brick wall", "steps": 2, "guidance_scale": 7.0, "seed": 7, "strength": 1.0,
         "scheduler": "PNDM"},
    )  # fmt: skip
    figures = perf.run_perf_analyzer(
        f"inpaint_{MODEL}", triton_server.grpc_url, data, 1, 2, tmp_path / "c1.csv", timeout=300,
        stability_percentage=1e-9,
    )  # fmt: skip
    assert figures["stable"] is False
    assert _finite_positive(figures["throughput_rps"]) and figures["p95_ms"] >= figures["p50_ms"] > 0


def test_rounds_rotate_so_no_level_or_method_always_goes_first():
    from triton_inpaint.tools.benchmark import rotated, spread

    orders = [rotated((1, 2, 4, 8), number) for number in range(4)]
    assert orders == [[1, 2, 4, 8], [2, 4, 8, 1], [4, 8, 1, 2], [8, 1, 2, 4]]
    assert [order[0] for order in orders] == [1, 2, 4, 8]
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
