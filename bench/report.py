"""Turn bench.load's JSON into the results table (medians over runs) and the latency-vs-rate plot.

    .venv/bin/python -m bench.report [bench/results/latest.json] [--plot docs/latency_vs_rate.png]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUSTAINED_P99_MS = 250.0  # a rate is "kept" when all is delivered, the producers offered it and p99 stays under this
# The systems bench.load knows, in column order, with their column titles; a table shows those in its file.
SYSTEMS = {"notify": "notify-server", "sio": "python-socketio", "node": "Node.js socket.io"}
# Issue 11's targets for notify-server: offered rate -> (p99, p50) in ms.
LATENCY_TARGETS_MS: dict[int, tuple[int | None, int | None]] = {500: (20, 5), 2000: (50, None)}
CPU_KEYS = ("server", "worker", "redis", "postgres", "client", "producer", "others")


def systems_in(data: dict[str, Any]) -> list[str]:
    present = {r["system"] for r in data["results"]}
    return [s for s in SYSTEMS if s in present]


def med(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def runs_of(results: list[dict[str, Any]], kind: str, system: str, **match: Any) -> list[dict[str, Any]]:
    return [r for r in results if r["kind"] == kind and r["system"] == system
            and all(r.get(k) == v for k, v in match.items())]


def ladder_step(run: dict[str, Any], rate: int) -> dict[str, Any] | None:
    return next((s for s in run.get("ladder", []) if s["rate_offered"] == rate), None)


def sustained(step: dict[str, Any]) -> bool:
    return (step["delivered"] == step["expected"] and step["duplicates"] == 0 and step["wrong_user"] == 0
            and (step["p99_ms"] or 1e9) <= SUSTAINED_P99_MS and step["producer_rate"] >= 0.95 * step["rate_offered"])


def highest_sustained(run: dict[str, Any]) -> float | None:
    ok = [s["rate_offered"] for s in run.get("ladder", []) if sustained(s)]
    return max(ok) if ok else None


def fmt(v: float | None, unit: str = "", digits: int = 0) -> str:
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{unit}"


def runs_fmt(values: list[float | None], unit: str = "", digits: int = 0) -> str:
    if not values:
        return "n/a"
    m = med(values)
    shown = ", ".join(fmt(v, "", digits) for v in values)
    return f"**{fmt(m, unit, digits)}** ({shown})" if len(values) > 1 else fmt(m, unit, digits)


def build(data: dict[str, Any]) -> tuple[list[tuple[str, ...]], dict[str, Any]]:
    """Rows of (figure, one cell per system of systems_in(data), target, met?): the targets are
    notify-server's, judged on its median."""
    results = data["results"]
    args = data["args"]
    systems = systems_in(data)
    rows: list[tuple[str, ...]] = []
    extra: dict[str, Any] = {}

    def row(figure: str, get: Callable[[str], list[float | None]], target: str,
            met: Callable[[float | None], bool] | None, unit: str = "", digits: int = 0) -> None:
        m = med(get("notify")) if "notify" in systems else None
        verdict = "–" if met is None or "notify" not in systems else ("yes" if m is not None and met(m) else "**no**")
        rows.append((figure, *(runs_fmt(get(sys_), unit, digits) for sys_ in systems), target, verdict))

    def notify_only(figure: str, cell: str, others: str, target: str = "–", verdict: str = "–") -> None:
        rows.append((figure, *(cell if sys_ == "notify" else others for sys_ in systems), target, verdict))

    mc = args.get("memory_connections")
    mem = lambda sys_: [r["rss_per_conn_kb"] for r in runs_of(results, "memory", sys_)]  # noqa: E731
    opened = lambda sys_: [r["open"]["opened"] for r in runs_of(results, "memory", sys_)]  # noqa: E731
    if any(runs_of(results, "memory", sys_) for sys_ in systems):
        largest = min((n for sys_ in systems for n in opened(sys_)), default=0)
        row(f"server RSS per idle connection at {mc:,} connections (KiB; {largest:,} opened in every run)",
            mem, "≤ 12 KB", lambda v: v is not None and v * 1.024 <= 12, " KiB", 1)
        row(f"time to open {mc:,} authenticated connections (s)",
            lambda sys_: [r["open"]["open_s"] for r in runs_of(results, "memory", sys_)], "≤ 3 s",
            lambda v: v is not None and v <= 3.0, " s", 2)
    main = lambda sys_: runs_of(results, "main", sys_)  # noqa: E731
    c = args.get("connections")
    row(f"server RSS per idle connection at {c:,} (KiB)",
        lambda sys_: [r["open"]["rss_per_conn_kb"] for r in main(sys_)], "–", None, " KiB", 1)
    row(f"time to open {c:,} authenticated connections (s, {c // 2:,} users × 2 tabs)",
        lambda sys_: [r["open"]["open_s"] for r in main(sys_)], "≤ 0.8 s", lambda v: v is not None and v <= 0.8,
        " s", 2)
    for rate in sorted({s["rate_offered"] for sys_ in systems for r in main(sys_) for s in r["ladder"]}):
        p99_target, p50_target = LATENCY_TARGETS_MS.get(rate, (None, None))
        row(f"end-to-end p99 at {rate:,} events/s, each to one user's 2 tabs (ms)",
            lambda sys_, rate=rate: [(ladder_step(r, rate) or {}).get("p99_ms") for r in main(sys_)],
            f"≤ {p99_target} ms" if p99_target else "–",
            (lambda v, t=p99_target: v is not None and v <= t) if p99_target else None, " ms")
        row(f"  p50 at {rate:,}/s (ms)",
            lambda sys_, rate=rate: [(ladder_step(r, rate) or {}).get("p50_ms") for r in main(sys_)],
            f"≤ {p50_target} ms" if p50_target else "–",
            (lambda v, t=p50_target: v is not None and v <= t) if p50_target else None, " ms", 1)
    row("delivered / expected, worst ladder step (%)",
        lambda sys_: [min((100.0 * s["delivered"] / s["expected"] for s in r["ladder"]), default=None)
                      for r in main(sys_)], "100 % (loss 0)", lambda v: v is not None and v >= 100.0, " %", 2)
    row("duplicate or misaddressed frames, all steps",
        lambda sys_: [sum(s["duplicates"] + s["wrong_user"] for s in r["ladder"] + [r["flood"]]) for r in main(sys_)],
        "0", lambda v: v == 0)
    row(f"highest rate kept on the ladder (events/s; 100 % delivered, p99 ≤ {SUSTAINED_P99_MS:.0f} ms, "
        "the producers offered ≥ 95 % of it)",
        lambda sys_: [highest_sustained(r) for r in main(sys_)], "≥ 3,000", lambda v: v is not None and v >= 3000)
    fe = args.get("flood_events")
    row(f"flood: {fe:,} events as fast as the producers enqueue, 1 worker, 1 node (events/s, 100 % delivered)",
        lambda sys_: [r["flood"]["events_per_s"] for r in main(sys_)], "–", None)
    row(f"drain: {fe:,} events queued while the worker was paused, then drained, 1 worker, 1 node (events/s)",
        lambda sys_: [r.get("drain", {}).get("events_per_s") for r in main(sys_)] if sys_ == "notify" else [],
        "–", None)
    for spec in [s for s in args.get("scale", "").split(",") if s]:
        w, n = (int(x) for x in spec.split("x"))
        runs = runs_of(results, "scale", "notify", workers=w, nodes=n)
        if runs:
            notify_only(f"flood with {w} worker(s), {n} node(s) (events/s)",
                        runs_fmt([r["flood"]["events_per_s"] for r in runs]), "–")
            if all("drain" in r for r in runs):
                notify_only(f"drain with {w} worker(s), {n} node(s) (events/s)",
                            runs_fmt([r["drain"]["events_per_s"] for r in runs]), "–")
    fr, fc = args.get("fanout_recipients"), args.get("fanout_connected")
    fan = lambda sys_, key: [r["fanout"].get(key) for r in main(sys_)]  # noqa: E731
    if "notify" in systems:
        notify_only(f"fan-out: one event to {fr:,} users, {fc:,} connected (1 tab each): all rows stored (s)",
                    runs_fmt(fan("notify", "all_rows_stored_s"), " s", 2), "n/a (stores nothing)")
    row("fan-out: every connected tab served (s after enqueue)", lambda sys_: fan(sys_, "span_s"), "≤ 0.3 s",
        lambda v: v is not None and v <= 0.3, " s", 2)
    row("fan-out: first frame (s after enqueue)", lambda sys_: fan(sys_, "first_frame_after_s"), "–", None, " s", 2)
    row("fan-out: deliveries/s, push phase (tabs / (last frame − first frame))",
        lambda sys_: [(r["fanout"]["delivered"] / r["fanout"]["push_phase_s"]) if r["fanout"]["push_phase_s"] else None
                      for r in main(sys_)], "–", None)
    row("fan-out: deliveries/s, end to end (tabs / (last frame − enqueue))",
        lambda sys_: fan(sys_, "deliveries_per_s"), "–", None)
    row("fan-out: delivered / connected tabs (%)",
        lambda sys_: [100.0 * r["fanout"]["delivered"] / r["fanout"]["expected"] for r in main(sys_)], "100 %",
        lambda v: v is not None and v >= 100, " %", 1)
    # CPU split at the 1,000/s step and client CPU while opening
    for rate in (500, 2000):
        for sys_ in systems:
            steps = [ladder_step(r, rate) for r in main(sys_)]
            steps = [s for s in steps if s]
            if steps:
                extra.setdefault("cpu", {})[(sys_, rate)] = {k: med(s["cpu_pct"].get(k) for s in steps)
                                                             for k in CPU_KEYS}
    extra["open_cpu"] = {sys_: {k: med(r["open"]["cpu_pct"].get(k) for r in main(sys_)) for k in ("client", "server")}
                         for sys_ in systems}
    return rows, extra


def ladder_medians(data: dict[str, Any], system: str) -> list[dict[str, Any]]:
    by_rate: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in runs_of(data["results"], "main", system):
        for s in r.get("ladder", []):
            by_rate[s["rate_offered"]].append(s)
    out = []
    for rate in sorted(by_rate):
        steps = by_rate[rate]
        out.append({"rate": rate, "runs": len(steps),
                    **{k: med(s[k] for s in steps) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "producer_rate")},
                    "delivered_pct": med(100.0 * s["delivered"] / s["expected"] for s in steps),
                    "all_delivered": all(s["delivered"] == s["expected"] for s in steps),
                    "cpu": {k: med(s["cpu_pct"].get(k) for s in steps) for k in CPU_KEYS}})
    return out


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    styles = {"notify": ("tab:blue", "notify-server"), "sio": ("tab:orange", "python-socketio (AsyncRedisManager)"),
              "node": ("tab:purple", "Node.js socket.io (@socket.io/redis-adapter)")}
    for system, (color, label) in styles.items():
        pts = ladder_medians(data, system)
        if not pts:
            continue
        xs = [p["rate"] for p in pts]
        ax.plot(xs, [p["p50_ms"] for p in pts], "-o", color=color, label=f"{label} p50")
        ax.plot(xs, [p["p99_ms"] for p in pts], "--s", color=color, label=f"{label} p99")
        for p in pts:
            if p["producer_rate"] is not None and p["producer_rate"] < 0.95 * p["rate"]:
                ax.plot([p["rate"]], [p["p50_ms"]], "o", mfc="none", mec="gray", markersize=13, mew=1.5)
            if not p["all_delivered"]:
                ax.plot([p["rate"]], [p["p99_ms"]], "x", color="red", markersize=12, mew=2)
    for rate, (p99_target, _) in LATENCY_TARGETS_MS.items():
        if p99_target:
            ax.plot([rate], [p99_target], "v", color="green", markersize=9)
    ax.plot([], [], "v", color="green", label="targets (p99)")
    ax.plot([], [], "o", mfc="none", mec="gray", markersize=11, label="producers < 95 % of the offered rate")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (events/s, each to one user with 2 tabs; 2,000 connections)")
    ax.set_ylabel("enqueue → frame latency per tab (ms)")
    runs = data["args"].get("runs")
    ax.set_title(f"Latency against offered rate (median of {runs} run{'s' if runs != 1 else ''}), "
                 "2-core shared machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", default=str(REPO / "bench" / "results" / "latest.json"))
    parser.add_argument("--plot", default=str(REPO / "docs" / "latency_vs_rate.png"))
    args = parser.parse_args()
    data = json.loads(Path(args.results).read_text())
    rows, extra = build(data)
    systems = systems_in(data)
    print(f"Runs: {data['args']['runs']}, {data['machine']}\n")
    print("| figure | " + " | ".join(SYSTEMS[s] for s in systems) + " | target | met? |")
    print("|---|" + "---|" * len(systems) + "---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\nLadder (medians over runs; latency per tab delivery, ms; CPU in % of one core):\n")
    print("| system | offered/s | runs | delivered | p50 | p95 | p99 | max | producer/s "
          "| server | worker | redis | postgres | client | producer | others |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for system in systems:
        for p in ladder_medians(data, system):
            c = p["cpu"]
            print(f"| {system} | {p['rate']:,} | {p['runs']} | {fmt(p['delivered_pct'], ' %', 2)} | "
                  f"{fmt(p['p50_ms'], '', 1)} | {fmt(p['p95_ms'])} | {fmt(p['p99_ms'])} | {fmt(p['max_ms'])} | "
                  f"{fmt(p['producer_rate'])} | " + " | ".join(fmt(c[k]) for k in CPU_KEYS) + " |")
    print("\nClient and server CPU while opening the connections (% of one core, medians):",
          json.dumps({k: {kk: round(vv or 0) for kk, vv in v.items()} for k, v in extra["open_cpu"].items()}))
    if args.plot:
        plot(data, Path(args.plot))
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
