"""One benchmark run, three views: the JSON record, a Markdown summary and a PNG chart.

Every headline figure is shown next to the baseline measured in the same run (bare
pydicom, torch eager, batch analysis, bare paho) and against its target, so a reader can
tell at a glance what the appliance adds or costs on this machine.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Headline:
    suite: str
    figure: str
    value: float | None
    unit: str
    baseline: str = ""                  # what the figure is compared with
    baseline_value: float | None = None
    target: str = ""                    # e.g. "<= 60" or "ratio >= 1.5"
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.baseline_value:
            return None
        return round(self.value / self.baseline_value, 3)


def headlines(suite: str, r: dict) -> list[Headline]:
    """The figures of one suite's results worth a line in the summary."""
    return _HEADLINES[suite](r) if suite in _HEADLINES else []


def _ingest(r: dict) -> list[Headline]:
    rate, ratio = r["slices_per_s"], r["ratios_to_bare_pydicom"]
    floor = r["targets"]["ratio_to_bare_pydicom"]
    return [
        Headline("ingest", "read, checked, ordered", rate["scanside_read"], "slices/s",
                 "bare pydicom, 1 process", rate["bare_pydicom_1_process"],
                 f"ratio >= {floor}", ratio["scanside_read_vs_1_process"] >= floor),
        Headline("ingest", "read and stacked in HU", rate["scanside_read_and_stack_hu"],
                 "slices/s", "bare pydicom, 1 process", rate["bare_pydicom_1_process"],
                 f"ratio >= {floor}", ratio["scanside_read_and_stack_hu_vs_1_process"] >= floor),
    ]


def _backends(r: dict) -> list[Headline]:
    latency, torch_name = r["latency"], "torch eager FP32 (CPU)"
    torch_p50 = latency[torch_name]["1"]["p50_ms"]
    rows = []
    for name, by_batch in latency.items():
        if name == torch_name:
            continue
        p50 = by_batch["1"]["p50_ms"]
        speedup = torch_p50 / p50
        target, met = "", None
        if name == "ONNX Runtime FP32 (CPU)":
            floor = r["targets"]["onnx_runtime_fp32_speedup_over_torch_batch_1"]
            target, met = f"speed-up >= {floor}", speedup >= floor
        rows.append(Headline("backends", f"{name}, batch 1, median", p50, "ms",
                             "torch eager FP32 (CPU)", torch_p50, target, met))
    worst = r["max_abs_difference_to_torch_fp32"].get("ONNX Runtime FP32 (CPU)")
    limit = r["targets"]["max_abs_difference"]
    rows.append(Headline("backends", "ONNX Runtime FP32 max |difference| to torch", worst, "",
                         target=f"<= {limit:g}", met=worst is not None and worst <= limit))
    return rows


def _analysis(r: dict) -> list[Headline]:
    target = r["target_median_ms"]
    rows = []
    torch = r["backends"].get("torch", {}).get("analysis_median_ms")
    for kind, figures in r["backends"].items():
        if kind == "torch":
            continue
        value = figures["analysis_median_ms"]
        on_cpu = kind == "auto"         # the target is the CPU box's; "torch CUDA" has none
        rows.append(Headline("analysis", f"CT slice analysed ({kind}: {figures['detail']})",
                             value, "ms", "torch eager backend" if torch else "", torch,
                             f"<= {target}" if on_cpu else "", value <= target if on_cpu
                             else None))
    return rows


def _streaming(r: dict) -> list[Headline]:
    limit = r["target"]["a_streaming_p95_over_batch"]
    ratio = r["a_streaming_p95_over_batch_p50"]
    return [
        Headline("streaming", f"(a) series known complete -> {r['a_measured_on']}, p95",
                 r["a_streaming_complete_to_final_s"]["p95"], "s",
                 "batch analysis of the finished series, p50", r["batch_s"]["p50"],
                 f"ratio <= {limit}", ratio <= limit),
        Headline("streaming", f"last slice landed -> known complete (file stable after "
                 f"{r['stable_s']:g} s, read), p95", r["last_slice_landed_to_complete_s"]["p95"],
                 "s"),
        Headline("streaming", "(b) slice landed -> its provisional alert, p50",
                 r["b_provisional_after_its_slice_s"]["p50"], "s"),
    ]


def _mqtt(r: dict) -> list[Headline]:
    bare, ours, targets = r["bare_paho_qos1"], r["outbox_and_publisher_qos1"], r["targets"]
    return [
        Headline("mqtt", "bare paho QoS 1, p99", bare["latency_ms"]["p99"], "ms",
                 target=f"<= {targets['bare_p99_ms']}",
                 met=bare["latency_ms"]["p99"] <= targets["bare_p99_ms"]),
        Headline("mqtt", "outbox + publisher QoS 1, p99", ours["latency_ms"]["p99"], "ms",
                 "bare paho QoS 1, p99", bare["latency_ms"]["p99"]),
        Headline("mqtt", "burst of 100 alerts through the outbox", ours["burst_100_ms"], "ms",
                 "bare paho burst", bare["burst_100_ms"], f"<= {targets['burst_100_ms']}",
                 ours["burst_100_ms"] <= targets["burst_100_ms"]),
    ]


_HEADLINES = {"ingest": _ingest, "backends": _backends, "analysis": _analysis,
              "streaming": _streaming, "mqtt": _mqtt}


def markdown(record: dict) -> str:
    machine = record["machine"]
    lines = [f"# Benchmarks {record['measured_at']} on {machine['host']}", "",
             f"{machine['cpu']}, {machine['cores_available']} cores available, "
             f"{machine['memory_gib']} GiB; GPU: {record.get('gpu') or 'none'}", "",
             "| suite | figure | value | baseline (same run) | ratio | target | met |",
             "|---|---|---|---|---|---|---|"]
    for row in record["headlines"]:
        row = Headline(**row)
        value = "n/a" if row.value is None else f"{row.value:g} {row.unit}".strip()
        baseline = (f"{row.baseline}: {row.baseline_value:g} {row.unit}".strip()
                    if row.baseline_value is not None else "")
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.suite} | {row.figure} | {value} | {baseline} | "
                     f"{row.ratio if row.ratio is not None else ''} | {row.target} | {met} |")
    versions = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    lines += ["", f"Libraries: {versions}.", ""]
    if record.get("chart"):
        lines += [f"![headline figures against their baselines]({record['chart']})", ""]
    return "\n".join(lines)


def chart(record: dict, path: Path) -> None:
    """One panel per suite: each figure beside its same-run baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [Headline(**h) for h in record["headlines"]
            if h["baseline_value"] is not None and h["value"] is not None]
    suites = list(dict.fromkeys(h.suite for h in rows))
    if not suites:
        return
    fig, axes = plt.subplots(len(suites), 1, figsize=(9, 1.2 + 1.3 * len(rows)),
                             squeeze=False)
    for axis, suite in zip(axes[:, 0], suites, strict=True):
        mine = [h for h in rows if h.suite == suite]
        y = range(len(mine))
        axis.barh([i + 0.2 for i in y], [h.value for h in mine], 0.4, label="scanside")
        axis.barh([i - 0.2 for i in y], [h.baseline_value for h in mine], 0.4,
                  label="baseline, same run", color="0.6")
        axis.set_yticks(list(y), [f"{h.figure}\nvs {h.baseline}" for h in mine], fontsize=7)
        axis.set_xlabel(mine[0].unit)
        axis.set_title(suite, fontsize=9, loc="left")
        axis.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(record: dict, out_dir: Path, stem: str) -> list[Path]:
    """`<stem>.json`, `<stem>.md` and `<stem>.png` under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record["headlines"] = [asdict(h) for suite, results in record["suites"].items()
                           for h in headlines(suite, results)]
    png = out_dir / f"{stem}.png"
    chart(record, png)
    if png.exists():
        record["chart"] = png.name
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    paths[0].write_text(json.dumps(record, indent=2) + "\n")
    paths[1].write_text(markdown(record))
    return paths + ([png] if png.exists() else [])
