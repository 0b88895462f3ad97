"""``bench.md`` and the plots from the figures ``triton-inpaint bench`` measured (``bench.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The targets (CPU), as ratios from one run; None where the target names no model.
TARGETS = {
    "served_over_in_process": {"benchtiny": 1.10, "benchsmall": 1.03},
    "ours_over_diffusers": {"benchtiny": 0.65, "benchsmall": 0.65},
    # progress and a preview every step cost at most a few percent where steps take real work
    "stream_over_served": {"benchtiny": None, "benchsmall": 1.05},
    "throughput_c4_over_c1": {"benchtiny": 1.5, "benchsmall": 1.2},
}


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _ranged(median: float, spread: dict[str, float] | None, form: str, unit: str = "") -> str:
    """``median unit (min-max)``: the range shows how far one run may stray on this machine."""
    text = f"{format(median, form)}{unit}"
    if spread is not None and spread["max"] > spread["min"]:
        text += f" ({format(spread['min'], form)}-{format(spread['max'], form)})"
    return text


def markdown(results: dict[str, Any]) -> str:
    lines = ["# triton-inpaint bench", ""]
    info = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    hardware = f"{info['cpu']}, {info['cores']} cores"
    if "usable_cores" in info:
        hardware += f" ({info['usable_cores']} usable), {info['memory_gib']} GiB"
    lines += [f"{hardware}; {info['platform']}, Python {info['python']}; {versions}.", ""]
    lines += [
        "Each figure is the median of its runs, with their range (min-max) where they differ: "
        f"{results['plan']['rounds']} rounds of single requests, {results['plan'].get('sweep_rounds', 1)} "
        "of the perf_analyzer sweep, the order rotating each round.",
        "",
    ]
    sections = (
        _side_by_side, _cache_table, _lora_table, _perf_table, _mixed_table, _time_table, _memory_table,
        _targets_table,
    )  # fmt: skip
    for section in sections:
        lines += section(results)
    lines += ["", "Plots: `throughput.png`, `latency.png`, `time_breakdown.png`.", ""]
    return "\n".join(lines)


def _side_by_side(results: dict[str, Any]) -> list[str]:
    """One request timed each way."""
    lines = ["## One request, side by side (interleaved rounds)", ""]
    lines += [_row(["model", "px", "steps", "diffusers", "ours in-process", "served gRPC", "streamed gRPC",
                    "gateway", "served / in-process", "streamed / served", "ours / diffusers", "cold start"]),
              _row(["---"] * 12)]  # fmt: skip
    for model in results["models"]:
        m, r, s = model["median_s"], model["ratios"], model.get("spread_s", {})
        lines.append(
            _row(
                [
                    f"{model['model']} (UNet {model['unet_parameters_m']} M)",
                    model["native_resolution"],
                    model["steps"],
                    *(
                        _ranged(m[method], s.get(method), ".3f", " s")
                        for method in (
                            "diffusers",
                            "ours_in_process",
                            "served_grpc",
                            "served_grpc_stream",
                            "gateway",
                        )
                    ),
                    f"{r['served_over_in_process']:.3f}",
                    f"{r['stream_over_served']:.3f}",
                    f"{r['ours_over_diffusers']:.3f}",
                    f"{model['cold_start_s']:.1f} s",
                ]
            )  # fmt: skip
        )
    return lines


def _distance(distance: dict[str, float]) -> str:
    mean, psnr = distance["mean_255"], distance["psnr_db"]
    return f"max {distance['max_255']:.0f}, mean {mean:.2f} /255, PSNR {psnr} dB"


def _cache_table(results: dict[str, Any]) -> list[str]:
    """Step caching: its speed and, beside it, its price in fidelity (the cached image's distance from
    the uncached one inside the mask)."""
    lines = ["", "## Step caching: speed and its price in fidelity (interleaved rounds)", ""]
    lines += [_row(["model", "request", "uncached", "cached", "cached / uncached", "cached steps",
                    "cached vs uncached image"]), _row(["---"] * 7)]  # fmt: skip
    for model in results["models"]:
        if "served_grpc_cached" not in model["median_s"]:
            continue
        m, s = model["median_s"], model.get("spread_s", {})
        lines.append(_row([
            model["model"], f"served gRPC, DeepCache interval 3, {model['steps']} steps",
            _ranged(m["served_grpc"], s.get("served_grpc"), ".3f", " s"),
            _ranged(m["served_grpc_cached"], s.get("served_grpc_cached"), ".3f", " s"),
            f"{model['ratios']['cached_over_served']:.3f}", "", _distance(model["cache_distance"]),
        ]))  # fmt: skip
    for family in results.get("step_cache", []):
        m, s = family["median_s"], family["spread_s"]
        lines.append(_row([
            f"tiny {family['family']}",
            f"in-process, acceleration {family['preset']}, {family['steps']} steps",
            _ranged(m["uncached"], s["uncached"], ".3f", " s"),
            _ranged(m["cached"], s["cached"], ".3f", " s"),
            f"{family['cached_over_uncached']:.3f}",
            f"{family['cached_steps']} of {family.get('denoiser_steps', family['steps'])}",
            _distance(family["distance"]),
        ]))  # fmt: skip
    return lines


def _mixed_table(results: dict[str, Any]) -> list[str]:
    """Cached requests mixed with uncached ones: throughput and how the UNet calls batch."""
    measured = [model for model in results["models"] if model.get("mixed_sweep")]
    if not measured:
        return []
    lines = ["", "## perf_analyzer, every other request cached (DeepCache interval 3)", ""]
    lines += [_row(["model", "concurrency", "requests/s", "vs c=1", "p50", "UNet rows a call",
                    "shallow UNet rows a call"]), _row(["---"] * 7)]  # fmt: skip
    for model in measured:
        base = model["mixed_sweep"][0]["throughput_rps"]
        for entry in model["mixed_sweep"]:
            ranges = entry.get("spread", {})
            lines.append(_row([
                model["model"], entry["concurrency"],
                _ranged(entry["throughput_rps"], ranges.get("throughput_rps"), ".3f"),
                f"{entry['throughput_rps'] / base:.2f}",
                _ranged(entry["p50_ms"], ranges.get("p50_ms"), ".0f", " ms"),
                f"{entry['unet_rows_per_call']:.2f}",
                f"{entry.get('shallow_rows_per_call', float('nan')):.2f}",
            ]))  # fmt: skip
    return lines


def write_real_size_report(results: dict[str, Any], out: Path) -> None:
    """``bench-real-size.md``: the real-size step-cache comparison."""
    figures, info = results["real_size"], results["machine"]
    m, s = figures["median_s"], figures["spread_s"]
    lines = [
        "# triton-inpaint bench --real-size", "",
        f"{info['cpu']}, {info['usable_cores']} usable cores, {info['memory_gib']} GiB; {figures['model']}, "
        f"{figures['side']} px, {figures['steps']} steps, {figures['rounds']} interleaved round(s).", "",
        _row(["request", "seconds"]), _row(["---"] * 2),
        _row(["diffusers, uncached", _ranged(m["diffusers_uncached"], s["diffusers_uncached"], ".1f")]),
        _row(["served gRPC, uncached", _ranged(m["served_uncached"], s["served_uncached"], ".1f")]),
        _row([f"served gRPC, DeepCache interval {figures['deep_cache_interval']}",
              _ranged(m["served_cached"], s["served_cached"], ".1f")]),
        "", f"Cached is {figures['uncached_over_cached']:.2f}x as fast as served uncached and "
        f"{figures['diffusers_over_cached']:.2f}x as fast as diffusers uncached. The price: the cached image "
        f"is at {_distance(figures['distance'])} from the uncached one inside the mask.", "",
    ]  # fmt: skip
    (out / "bench-real-size.md").write_text("\n".join(lines))


def _lora_table(results: dict[str, Any]) -> list[str]:
    """What banked LoRA adapters cost: our pipeline in-process, plain export against the banked one."""
    measured = [model for model in results["models"] if "lora" in model]
    if not measured:
        return []
    lines = ["", "## LoRA adapters' cost (in-process, interleaved rounds)", ""]
    lines += [_row(["model", "adapters x rank", "plain", "with adapters", "with / plain"]), _row(["---"] * 5)]
    for model in measured:
        lora = model["lora"]
        m, s = lora["median_s"], lora["spread_s"]
        lines.append(
            _row([model["model"], f"{lora['adapters']} x {lora['rank']}",
                  _ranged(m["plain"], s["plain"], ".3f", " s"), _ranged(m["lora"], s["lora"], ".3f", " s"),
                  f"{lora['lora_over_plain']:.3f}"])
        )  # fmt: skip
    return lines


def _perf_table(results: dict[str, Any]) -> list[str]:
    """perf_analyzer's sweep against the ensemble."""
    lines = ["", "## perf_analyzer against the ensemble", ""]
    lines += [_row(["model", "concurrency", "requests/s", "vs c=1", "p50", "p95", "UNet rows a call",
                    "requests a UNet call"]), _row(["---"] * 8)]  # fmt: skip
    for model in results["models"]:
        base = model["sweep"][0]["throughput_rps"]
        for entry in model["sweep"]:
            ranges = entry.get("spread", {})
            lines.append(
                _row(
                    [
                        model["model"],
                        entry["concurrency"],
                        _ranged(entry["throughput_rps"], ranges.get("throughput_rps"), ".3f")
                        + ("" if entry.get("stable", True) else " (unstable)"),
                        f"{entry['throughput_rps'] / base:.2f}",
                        _ranged(entry["p50_ms"], ranges.get("p50_ms"), ".0f", " ms"),
                        _ranged(entry["p95_ms"], ranges.get("p95_ms"), ".0f", " ms"),
                        f"{entry['unet_rows_per_call']:.2f}",
                        f"{entry['requests_per_unet_call']:.2f}",
                    ]
                )  # fmt: skip
            )
    return lines


def _time_table(results: dict[str, Any]) -> list[str]:
    """Queue and compute per Triton model, per request."""
    lines = ["", "## Where the time goes (per request, from Triton's statistics)", ""]
    lines += [_row(["model", "concurrency", "Triton model", "queue", "compute"]), _row(["---"] * 5)]
    for model in results["models"]:
        for entry in model["sweep"]:
            for name, figures in sorted(entry["models"].items()):
                lines.append(
                    _row(
                        [
                            model["model"],
                            entry["concurrency"],
                            name,
                            f"{figures['queue_ms_per_request']:.1f} ms",
                            f"{figures['compute_ms_per_request']:.1f} ms",
                        ]
                    )  # fmt: skip
                )
    return lines


def _memory_table(results: dict[str, Any]) -> list[str]:
    """PSS of the served stack and the gateway."""
    lines = ["", "## Memory (PSS)", ""]
    lines += [
        _row(["model", "served stack", "ONNX weights", "stack minus weights", "gateway"]),
        _row(["---"] * 5),
    ]
    for model in results["models"]:
        mem = model["memory"]
        lines.append(
            _row(
                [
                    model["model"],
                    f"{mem['served_stack_mib']:.0f} MiB",
                    f"{mem['weights_mib']:.0f} MiB",
                    f"{mem['served_stack_minus_weights_mib']:.0f} MiB",
                    f"{mem['gateway_mib']:.0f} MiB",
                ]
            )  # fmt: skip
        )
    lines += ["", "Per process:", ""]
    for model in results["models"]:
        parts = ", ".join(f"{k} {v:.0f}" for k, v in model["memory"]["processes_mib"].items())
        lines.append(f"- {model['model']} (MiB): {parts}")
    return lines


def _targets_table(results: dict[str, Any]) -> list[str]:
    """Each target ratio, measured against its bound."""
    lines = ["", "## Targets", ""]
    lines += [_row(["model", "ratio", "measured", "target", "met"]), _row(["---"] * 5)]
    for model in results["models"]:
        for ratio, per_model in TARGETS.items():
            target = per_model.get(model["model"])
            measured = model["ratios"].get(ratio)
            if target is None or measured is None:
                continue
            met = measured <= target if "over_c1" not in ratio else measured >= target
            sign = "<=" if "over_c1" not in ratio else ">="
            lines.append(
                _row([model["model"], ratio, f"{measured:.3f}", f"{sign} {target}", "yes" if met else "no"])
            )
    return lines


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    figure, axis = plt.subplots(figsize=(6, 4))
    for model in results["models"]:  # relative to c=1, so models of any speed share one axis
        levels = [entry["concurrency"] for entry in model["sweep"]]
        base = model["sweep"][0]["throughput_rps"]
        label = f"{model['model']} (c=1: {base:.2f} req/s)"
        axis.plot(levels, [e["throughput_rps"] / base for e in model["sweep"]], marker="o", label=label)
    axis.axhline(1.0, color="grey", linewidth=0.5)
    axis.set(xlabel="concurrency", ylabel="throughput / at c=1", title="Throughput (perf_analyzer)")
    axis.legend()
    figure.tight_layout()
    written.append(out / "throughput.png")
    figure.savefig(written[-1], dpi=100)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(6, 4))
    for model in results["models"]:
        levels = [entry["concurrency"] for entry in model["sweep"]]
        for key, style in (("p50_ms", "-o"), ("p95_ms", "--s")):
            axis.plot(levels, [e[key] for e in model["sweep"]], style, label=f"{model['model']} {key[:3]}")
    axis.set(xlabel="concurrency", ylabel="latency (ms)", title="Latency (perf_analyzer)")
    axis.legend()
    figure.tight_layout()
    written.append(out / "latency.png")
    figure.savefig(written[-1], dpi=100)
    plt.close(figure)

    figure, axes = plt.subplots(
        1, len(results["models"]), figsize=(6 * len(results["models"]), 4), squeeze=False
    )
    for axis, model in zip(axes[0], results["models"], strict=True):
        entry = model["sweep"][0]
        names = sorted(entry["models"])
        compute = [entry["models"][n]["compute_ms_per_request"] for n in names]
        queue = [entry["models"][n]["queue_ms_per_request"] for n in names]
        axis.barh(names, compute, label="compute")
        axis.barh(names, queue, left=compute, label="queue")
        axis.set(xlabel="ms per request", title=f"{model['model']} at concurrency {entry['concurrency']}")
        axis.legend()
    figure.tight_layout()
    written.append(out / "time_breakdown.png")
    figure.savefig(written[-1], dpi=100)
    plt.close(figure)
    return written


def write_report(results: dict[str, Any], out: Path) -> None:
    (out / "bench.md").write_text(markdown(results))
    plots(results, out)
