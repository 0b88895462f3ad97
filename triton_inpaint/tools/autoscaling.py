"""A small discrete-time model of the chart's autoscaling: Triton replicas serving a load ramp, scaled by
the HorizontalPodAutoscaler algorithm on the same metric the chart scales on (average queue time per
inpainting request over a window, per pod).

Nothing here can run a cluster, so this is how the chart's defaults are chosen and how an operator can
try other numbers (``triton-inpaint autoscale-sim``, docs/autoscaling.md). Written by hand: no library
models Kubernetes' HPA. Its algorithm follows the Kubernetes documentation: desired = ceil(ready *
metric / target) outside a tolerance, stabilization windows (the lowest recommendation of the window
for scale-up, the highest for scale-down), and rate policies per period.

Assumptions (said again in the docs): requests are spread as :class:`Balancing` says, by default as
the chart's gateways spread them (round robin over the pods they have found; see docs/deploy.md); a
replica serves up to ``max_inflight`` requests at once at the throughput measured by ``bench`` at that
concurrency, and queues the rest; a removed pod finishes what it holds.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServiceCurve:
    """Requests/s of one replica with n requests in flight, measured at a few n (perf_analyzer)."""

    throughput: dict[int, float]
    max_inflight: int = 4

    def rate(self, n: int) -> float:
        """Throughput at n in flight: linear between measured points, flat beyond the last."""
        points = sorted(self.throughput.items())
        if n <= points[0][0]:
            return points[0][1] * n / points[0][0]
        for (n0, r0), (n1, r1) in zip(points, points[1:], strict=False):
            if n <= n1:
                return r0 + (r1 - r0) * (n - n0) / (n1 - n0)
        return points[-1][1]


@dataclass(frozen=True)
class HpaSettings:
    target_queue_s: float = 1.0
    # The second metric: requests in flight per pod (Little's law: request seconds per second). Queue
    # time alone is 0 whenever the pods keep up, and the HPA's proportional rule then scales a loaded
    # deployment down to its minimum; the HPA takes the larger of the two metrics' replica counts.
    target_inflight: float | None = 0.5
    min_replicas: int = 1
    max_replicas: int = 8
    tolerance: float = 0.1
    sync_s: float = 15.0
    window_s: float = 60.0  # the metric's rate() window
    scrape_s: float = 15.0  # Prometheus scrape interval: the metric lags by up to this
    up_stabilization_s: float = 0.0
    up_percent: float = 100.0
    up_pods: int = 4
    up_period_s: float = 15.0
    down_stabilization_s: float = 300.0
    down_percent: float = 50.0
    down_period_s: float = 60.0
    pod_start_s: float = 90.0  # scheduling, image pull, model load until ready


BALANCING_POLICIES = ("round-robin", "least-loaded", "per-connection")


@dataclass(frozen=True)
class Balancing:
    """How requests reach pods.

    - ``round-robin``: what the chart deploys. Each request goes to the next of the pods the gateways
      know, in turn, whatever their load. A ready pod becomes known when the gateways next resolve the
      headless Service's name, which Triton's connection age (``discovery_s``, the chart's 30 s) causes:
      after a delay drawn uniformly from [0, ``discovery_s``]. A pod leaving is dropped at once.
    - ``least-loaded``: each request to the least-loaded ready pod (an ideal balancer).
    - ``per-connection``: a ClusterIP Service with gRPC: each of ``gateways`` keeps one connection to
      the pod it first reached and sends it all its requests; pods added later get none.
    """

    policy: str = "round-robin"
    discovery_s: float = 30.0
    gateways: int = 2


@dataclass(frozen=True)
class LoadRamp:
    """Poisson arrivals: ``base_rps`` held, ramped linearly to ``factor`` times, held, ramped down, held."""

    base_rps: float
    factor: float = 10.0
    phases_s: tuple[float, float, float, float, float] = (300.0, 600.0, 900.0, 300.0, 600.0)

    @property
    def duration_s(self) -> float:
        return sum(self.phases_s)

    def rate(self, t: float) -> float:
        hold, up, peak, down, _ = self.phases_s
        high = self.base_rps * self.factor
        if t < hold:
            return self.base_rps
        if t < hold + up:
            return self.base_rps + (high - self.base_rps) * (t - hold) / up
        if t < hold + up + peak:
            return high
        if t < hold + up + peak + down:
            return high - (high - self.base_rps) * (t - hold - up - peak) / down
        return self.base_rps


@dataclass
class _Pod:
    ready_at: float
    known_at: float = 0.0  # when the gateways start sending it requests (round robin)
    queue: deque = field(default_factory=deque)  # arrival times
    serving: list = field(default_factory=list)  # [arrival, start, work left]
    done: list = field(default_factory=list)  # (completed at, queue seconds, request seconds)
    draining: bool = False

    def load(self) -> int:
        return len(self.queue) + len(self.serving)


@dataclass
class SimResult:
    times: list[float]
    load_rps: list[float]
    ready: list[int]
    desired: list[int]
    metric_s: list[float]
    requests: list[tuple[float, float, float]]  # arrival, start, end

    def buckets(self, width_s: float = 30.0) -> list[dict[str, float]]:
        """Per ``width_s``: offered load, ready pods, and p95 queue time and latency of requests that
        arrived in it."""
        rows = []
        end = max(self.times) if self.times else 0.0
        for start in range(0, int(end), int(width_s)):
            window = [r for r in self.requests if start <= r[0] < start + width_s]
            index = min(int(start / (self.times[1] - self.times[0])), len(self.times) - 1)
            rows.append({
                "t_s": float(start),
                "load_rps": self.load_rps[index],
                "ready": self.ready[index],
                "p95_queue_s": _p95([s - a for a, s, _ in window]),
                "p95_latency_s": _p95([e - a for a, _, e in window]),
            })  # fmt: skip
        return rows

    def summary(self, width_s: float = 30.0) -> dict[str, float]:
        rows = self.buckets(width_s)
        dt = self.times[1] - self.times[0]
        return {
            "requests": len(self.requests),
            "max_p95_queue_s": max(r["p95_queue_s"] for r in rows),
            "max_p95_latency_s": max(r["p95_latency_s"] for r in rows),
            "max_ready": max(self.ready),
            "replica_hours": sum(self.ready) * dt / 3600,
        }


def _p95(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def _metrics(pods: list[_Pod], now: float, hpa: HpaSettings) -> tuple[float, float] | None:
    """The averages over ready pods of (queue seconds per answered request, requests in flight) over
    the window, as Prometheus saw them at its last scrape. Triton counts both when a request ends."""
    seen = math.floor(now / hpa.scrape_s) * hpa.scrape_s
    queue, inflight = [], []
    for pod in pods:
        if pod.draining or pod.ready_at > now:
            continue
        recent = [(q, d) for at, q, d in pod.done if seen - hpa.window_s < at <= seen]
        queue.append(sum(q for q, _ in recent) / len(recent) if recent else 0.0)
        inflight.append(sum(d for _, d in recent) / hpa.window_s)
    if not queue:
        return None
    return sum(queue) / len(queue), sum(inflight) / len(inflight)


def _proportional(current: int, ready: int, value: float, target: float, hpa: HpaSettings) -> int:
    ratio = value / target
    return current if abs(ratio - 1) <= hpa.tolerance else math.ceil(max(ready, 1) * ratio)


class _Router:
    """Picks the pod of each arriving request under a :class:`Balancing` policy."""

    def __init__(self, balancing: Balancing, rng: random.Random) -> None:
        if balancing.policy not in BALANCING_POLICIES:
            raise ValueError(f"balancing: must be one of {BALANCING_POLICIES}, got {balancing.policy!r}")
        self.balancing = balancing
        self.rng = rng
        self.turn = 0
        self.connections: list[_Pod | None] = [None] * balancing.gateways

    def new_pod(self, ready_at: float) -> _Pod:
        return _Pod(ready_at=ready_at, known_at=ready_at + self.rng.uniform(0, self.balancing.discovery_s))

    def pick(self, pods: list[_Pod], now: float) -> _Pod:
        live = [p for p in pods if not p.draining]
        ready = [p for p in live if p.ready_at <= now] or live
        if self.balancing.policy == "least-loaded":
            return min(ready, key=_Pod.load)
        if self.balancing.policy == "round-robin":
            known = [p for p in ready if p.known_at <= now] or ready
            self.turn += 1
            return known[self.turn % len(known)]
        gateway = self.rng.randrange(len(self.connections))
        pod = self.connections[gateway]
        if pod is None or pod.draining:  # connects (again) to whichever ready pod it reaches
            pod = self.connections[gateway] = self.rng.choice(ready)
        return pod


def simulate(
    service: ServiceCurve,
    hpa: HpaSettings,
    load: LoadRamp,
    seed: int = 0,
    dt: float = 0.1,
    balancing: Balancing | None = None,
) -> SimResult:
    rng = random.Random(seed)
    router = _Router(balancing or Balancing(), rng)
    pods = [_Pod(ready_at=0.0) for _ in range(hpa.min_replicas)]
    recommendations: list[tuple[float, int]] = []
    scale_events: list[tuple[float, int]] = [(0.0, hpa.min_replicas)]  # (time, replicas after)
    result = SimResult([], [], [], [], [], [])
    next_sync = hpa.sync_s
    metric = 0.0
    steps = int(load.duration_s / dt)
    for step in range(steps):
        now = step * dt
        # Arrivals: Poisson over the step, each to the pod the balancing picks.
        arrivals = _poisson(rng, load.rate(now) * dt)
        for _ in range(arrivals):
            router.pick(pods, now).queue.append(now + rng.random() * dt)
        # Service: processor sharing among the requests in flight, at the measured throughput.
        for pod in pods:
            if pod.ready_at > now:
                continue
            while pod.queue and len(pod.serving) < service.max_inflight:
                arrival = pod.queue.popleft()
                pod.serving.append([arrival, max(now, arrival), 1.0])
            if pod.serving:
                share = service.rate(len(pod.serving)) / len(pod.serving) * dt
                for item in pod.serving:
                    item[2] -= share
                for item in [i for i in pod.serving if i[2] <= 0]:
                    pod.serving.remove(item)
                    result.requests.append((item[0], item[1], now + dt))
                    pod.done.append((now + dt, item[1] - item[0], now + dt - item[0]))
        pods = [p for p in pods if not (p.draining and not p.load())]
        # The autoscaler.
        if now >= next_sync:
            next_sync += hpa.sync_s
            current = sum(1 for p in pods if not p.draining)
            seen = _metrics(pods, now, hpa)
            if seen is not None:
                metric, inflight = seen
                ready_count = sum(1 for p in pods if p.ready_at <= now and not p.draining)
                wanted = _proportional(current, ready_count, metric, hpa.target_queue_s, hpa)
                if hpa.target_inflight:
                    wanted = max(
                        wanted, _proportional(current, ready_count, inflight, hpa.target_inflight, hpa)
                    )
                wanted = min(max(wanted, hpa.min_replicas), hpa.max_replicas)
                recommendations.append((now, wanted))
                desired = _stabilized(recommendations, now, current, hpa)
                desired = _rate_limited(scale_events, now, current, desired, hpa)
                if desired > current:
                    pods += [router.new_pod(now + hpa.pod_start_s) for _ in range(desired - current)]
                elif desired < current:
                    # Remove pods not yet ready first, then the least loaded; they finish what they hold.
                    live = sorted(
                        (p for p in pods if not p.draining), key=lambda p: (p.ready_at <= now, p.load())
                    )
                    for pod in live[: current - desired]:
                        pod.draining = True
                if desired != current:
                    scale_events.append((now, desired))
        result.times.append(now)
        result.load_rps.append(load.rate(now))
        result.ready.append(sum(1 for p in pods if p.ready_at <= now and not p.draining))
        result.desired.append(sum(1 for p in pods if not p.draining))
        result.metric_s.append(metric)
    return result


def _poisson(rng: random.Random, mean: float) -> int:
    """Knuth's method: fine for the small means of one step."""
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _stabilized(recommendations: list[tuple[float, int]], now: float, current: int, hpa: HpaSettings) -> int:
    up = [r for t, r in recommendations if t > now - hpa.up_stabilization_s - 1e-9] or [current]
    down = [r for t, r in recommendations if t > now - hpa.down_stabilization_s - 1e-9] or [current]
    latest = recommendations[-1][1]
    if latest > current:
        return max(current, min(up))
    if latest < current:
        return min(current, max(down))
    return current


def _rate_limited(
    events: list[tuple[float, int]], now: float, current: int, desired: int, hpa: HpaSettings
) -> int:
    def replicas_at(t: float) -> int:
        return next((r for when, r in reversed(events) if when <= t), events[0][1])

    if desired > current:
        base = replicas_at(now - hpa.up_period_s)
        limit = max(math.ceil(base * (1 + hpa.up_percent / 100)), base + hpa.up_pods)
        return min(desired, max(limit, current))
    if desired < current:
        base = replicas_at(now - hpa.down_period_s)
        limit = math.floor(base * (1 - hpa.down_percent / 100))
        return max(desired, min(limit, current))
    return current


# The small benchmark model on this project's 2-core CI machine (docs/benchmarks.md, reference run):
# requests/s at 1, 2, 4 and 8 in flight.
REFERENCE_CURVE = {1: 0.461, 2: 0.461, 4: 0.436, 8: 0.453}


def curve_from_bench(path: Path, model: str, max_inflight: int) -> ServiceCurve:
    """The throughput curve of ``model`` from a ``triton-inpaint bench`` run's bench.json."""
    try:
        data = json.loads(path.read_text())
        models = {m["model"]: m for m in data["models"]}
    except OSError as exc:
        raise ValueError(f"--bench {path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--bench {path}: not a bench.json of `triton-inpaint bench` ({exc})") from None
    if model not in models:
        raise ValueError(f"--model {model!r}: not in {path}; it has {', '.join(sorted(models)) or 'none'}")
    entry = models[model]
    return ServiceCurve({s["concurrency"]: s["throughput_rps"] for s in entry["sweep"]}, max_inflight)


def write_report(
    result: SimResult, hpa: HpaSettings, load: LoadRamp, out: Path, balancing: Balancing | None = None
) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    rows = result.buckets(60.0)
    summary = result.summary()
    minutes = [t / 60 for t in result.times]
    figure, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(minutes, result.load_rps)
    axes[0].set_ylabel("offered load (req/s)")
    axes[1].plot(minutes, result.ready, label="ready")
    axes[1].plot(minutes, result.desired, label="desired", linestyle="--")
    axes[1].set_ylabel("Triton replicas")
    axes[1].legend()
    axes[2].plot([r["t_s"] / 60 for r in rows], [r["p95_queue_s"] for r in rows], label="p95 queue")
    axes[2].plot([r["t_s"] / 60 for r in rows], [r["p95_latency_s"] for r in rows], label="p95 latency")
    axes[2].axhline(hpa.target_queue_s, color="grey", linestyle=":", label="queue target (average)")
    axes[2].set_ylabel("seconds")
    axes[2].set_xlabel("minutes")
    axes[2].legend()
    figure.tight_layout()
    figure.savefig(out / "autoscaling.png", dpi=100)
    plt.close(figure)
    lines = [
        "# Autoscaling simulation",
        "",
        f"Load: {load.base_rps:g} req/s, ramped to {load.factor:g}x; HPA: {hpa}; "
        f"balancing: {balancing or Balancing()}.",
        "",
        "| " + " | ".join(f"{k}" for k in summary) + " |",
        "| " + " | ".join("---" for _ in summary) + " |",
        "| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in summary.values()) + " |",
        "",
        "| minute | load (req/s) | ready replicas | p95 queue (s) | p95 latency (s) |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {r['t_s'] / 60:.0f} | {r['load_rps']:.2f} | {r['ready']} | {r['p95_queue_s']:.1f} | "
            f"{r['p95_latency_s']:.1f} |"
            for r in rows
        ),
    ]
    (out / "autoscaling.md").write_text("\n".join(lines) + "\n")
    (out / "autoscaling.json").write_text(json.dumps({"summary": summary, "minutes": rows}, indent=1))
    return summary


def _command(args: argparse.Namespace) -> int:
    if args.bench:
        service = curve_from_bench(args.bench, args.model, args.max_inflight)
    else:
        service = ServiceCurve(REFERENCE_CURVE, args.max_inflight)
    hpa = HpaSettings(
        target_queue_s=args.target_queue,
        target_inflight=args.target_inflight or None,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        pod_start_s=args.pod_start,
        down_stabilization_s=args.scale_down_window,
    )
    load = LoadRamp(base_rps=args.base_load, factor=args.factor)
    balancing = Balancing(args.balancing, discovery_s=args.discovery, gateways=args.gateways)
    result = simulate(service, hpa, load, seed=args.seed, balancing=balancing)
    summary = write_report(result, hpa, load, args.out, balancing)
    print(", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))
    print(f"wrote autoscaling.png, autoscaling.md and autoscaling.json to {args.out}")
    return 0


def add_subcommands(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "autoscale-sim",
        help="simulate the chart's autoscaling through a load ramp (plot and table)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the plot and tables")
    parser.add_argument("--bench", type=Path, default=None, help="bench.json to take the service curve from")
    parser.add_argument("--model", default="benchsmall", help="model of --bench")
    parser.add_argument("--max-inflight", type=int, default=4, help="requests a replica serves at once")
    parser.add_argument("--base-load", type=float, default=0.3, help="requests/s before the ramp")
    parser.add_argument("--factor", type=float, default=10.0, help="peak load over the base load")
    parser.add_argument("--target-queue", type=float, default=1.0, help="queue seconds per request target")
    parser.add_argument(
        "--target-inflight", type=float, default=0.5, help="requests in flight per pod; 0: off"
    )
    parser.add_argument("--min-replicas", type=int, default=1, help="pods the autoscaler keeps at least")
    parser.add_argument("--max-replicas", type=int, default=8, help="pods the autoscaler adds at most")
    parser.add_argument("--pod-start", type=float, default=90.0, help="seconds until a new pod is ready")
    parser.add_argument("--scale-down-window", type=float, default=300.0, help="scale-down stabilization, s")
    parser.add_argument(
        "--balancing",
        choices=BALANCING_POLICIES,
        default="round-robin",
        help="how requests reach pods: round-robin (the chart's gateways over the headless Service), "
        "least-loaded (an ideal balancer), per-connection (gRPC through a ClusterIP Service)",
    )
    parser.add_argument(
        "--discovery",
        type=float,
        default=30.0,
        help="round-robin: longest delay before a ready pod gets requests, s (Triton's gRPC connection age)",
    )
    parser.add_argument("--gateways", type=int, default=2, help="per-connection: gateway replicas")
    parser.add_argument("--seed", type=int, default=0, help="seed of the simulated arrivals")
    parser.set_defaults(handler=_command)
