"""The autoscaling simulation behind the chart's defaults (triton_inpaint.tools.autoscaling)."""

from __future__ import annotations

import subprocess
import sys

from triton_inpaint.tools.autoscaling import REFERENCE_CURVE, HpaSettings, LoadRamp, ServiceCurve, simulate


def test_the_service_curve_interpolates_and_holds_beyond_the_last_point():
    curve = ServiceCurve({1: 1.0, 2: 1.6, 4: 2.0})
    assert curve.rate(1) == 1.0 and curve.rate(3) == 1.8 and curve.rate(9) == 2.0


def test_a_steady_load_under_one_pod_stays_at_the_minimum():
    result = simulate(ServiceCurve({1: 1.0, 4: 3.0}), HpaSettings(), LoadRamp(base_rps=0.2, factor=1.0))
    summary = result.summary()
    assert summary["max_ready"] == 1 and summary["requests"] > 300


def test_the_chart_defaults_keep_up_with_a_tenfold_ramp_where_queue_time_alone_does_not():
    """Queue time is 0 while pods keep up, so alone it lets the HPA scale a loaded deployment down; with
    the in-flight metric beside it, the p95 queue time stays low through the ramp."""
    curve, load = ServiceCurve(REFERENCE_CURVE), LoadRamp(base_rps=0.3)
    both = simulate(curve, HpaSettings(), load).summary()
    queue_only = simulate(curve, HpaSettings(target_inflight=None), load).summary()
    print(f"defaults: {both}\nqueue time only: {queue_only}")
    assert both["max_p95_queue_s"] < 10 < queue_only["max_p95_queue_s"]
    assert both["max_ready"] > 1


def test_the_command_writes_the_plot_and_the_table(tmp_path):
    command = [
        sys.executable,
        "-m",
        "triton_inpaint.cli",
        "autoscale-sim",
        "--out",
        str(tmp_path),
        "--factor",
        "3",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "autoscaling.png").stat().st_size > 10_000
    assert "| minute |" in (tmp_path / "autoscaling.md").read_text()


def test_how_requests_reach_pods_decides_whether_scaling_helps():
    """Through a ClusterIP Service each gateway's gRPC connection stays on one pod, and pods added later
    get nothing: the deployment scales up and still falls behind. The chart's round robin over the
    headless Service, which finds new pods within the connection age, keeps close to an ideal
    least-loaded balancer."""
    from triton_inpaint.tools.autoscaling import Balancing

    curve, load = ServiceCurve(REFERENCE_CURVE), LoadRamp(base_rps=0.3)
    runs = {
        policy: simulate(curve, HpaSettings(), load, balancing=Balancing(policy)).summary()
        for policy in ("least-loaded", "round-robin", "per-connection")
    }
    print("\n".join(f"{policy}: {summary}" for policy, summary in runs.items()))
    assert runs["per-connection"]["max_p95_queue_s"] > 100 * runs["round-robin"]["max_p95_queue_s"]
    assert runs["per-connection"]["requests"] < 0.5 * runs["round-robin"]["requests"]  # never answered
    assert runs["round-robin"]["max_p95_queue_s"] < 2 * runs["least-loaded"]["max_p95_queue_s"]
    assert runs["round-robin"]["max_p95_queue_s"] < 10
