"""Backends: one model, one set of inputs, every backend this machine has.

CPU: torch eager FP32, ONNX Runtime FP32 and FP16, all with the same number of threads.
GPU (when present): torch CUDA FP32 and FP16, ONNX Runtime's CUDA provider (FP16 model)
and TensorRT (FP16 engine) when installed. Each runs a warm-up, then timed iterations per
batch size; reported are p50/p95/p99 latency, throughput, and the largest difference of
each backend's output from torch FP32 on the same inputs. Target (issue 4): ONNX Runtime
FP32 at least 1.5x faster than torch eager FP32 at batch 1 on 2 cores, max abs
difference <= 1e-4.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.inference.zoo import DEFAULT_ZOO


def _runners(zoo_dir: Path, threads: int, engines: Path | None) -> dict[str, Callable]:
    """name -> function(batch) -> lesion probabilities, for every backend available here."""
    import onnxruntime as ort
    import torch

    from edge.backends.onnxruntime import OnnxRuntimeBackend
    from models.checkpoint import load_checkpoint
    from models.network import Probabilities

    torch.set_num_threads(threads)

    def network():
        return Probabilities(load_checkpoint(zoo_dir / "model.pt").build()).eval()

    runners: dict[str, Callable] = {}

    def torch_runner(model, device, dtype):
        def run(batch):
            with torch.inference_mode():
                x = torch.from_numpy(batch).to(device, dtype)
                out = model(x)[0]
                if device != "cpu":
                    torch.cuda.synchronize()
                return out.float().cpu().numpy()
        return run

    runners["torch eager FP32 (CPU)"] = torch_runner(network(), "cpu", torch.float32)
    cpu = ["CPUExecutionProvider"]
    for label, name in (("FP32", "model.onnx"), ("FP16", "model.fp16.onnx")):
        backend = OnnxRuntimeBackend(zoo_dir / name, cpu, threads)
        runners[f"ONNX Runtime {label} (CPU)"] = lambda b, k=backend: k.infer(b)[0]
    if torch.cuda.is_available():
        # a network of its own each: Module.to() moves in place
        runners["torch CUDA FP32"] = torch_runner(network().cuda(), "cuda", torch.float32)
        runners["torch CUDA FP16"] = torch_runner(network().half().cuda(), "cuda",
                                                  torch.float16)
    if "CUDAExecutionProvider" in ort.get_available_providers():
        backend = OnnxRuntimeBackend(zoo_dir / "model.fp16.onnx", ["CUDAExecutionProvider"])
        runners["ONNX Runtime CUDA FP16"] = lambda b, k=backend: k.infer(b)[0]
    if engines is not None:
        from edge.backends.select import choose, open_backend, probe

        try:
            choice = choose("tensorrt", zoo_dir, engines, probe())
            backend = open_backend(choice)
            runners["TensorRT FP16"] = lambda b, k=backend: k.infer(b)[0]
        except Exception as error:  # report why TensorRT is absent, measure the rest
            print(f"TensorRT not measured: {error}")
    return runners


def measure(run: Callable, batch: np.ndarray, warmup: int, iterations: int) -> dict:
    for _ in range(warmup):
        run(batch)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(batch)
        times.append((time.perf_counter() - start) * 1e3)
    p50, p95, p99 = np.percentile(times, [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3),
            "p99_ms": round(float(p99), 3),
            "slices_per_s": round(len(batch) / (float(p50) / 1e3), 1),
            "iterations": iterations}


def run(modality: str = "CT", zoo: Path = DEFAULT_ZOO, batch_sizes=(1, 4, 8), threads: int = 2,
        warmup: int = 5, iterations: int = 30, engines: Path | None = None,
        chart: Path | None = None) -> dict:
    import json

    from edge.inference.spec import ModelSpec
    from export.onnx_export import metadata
    from models.network import NetworkConfig, gflops_per_slice

    zoo_dir = Path(zoo) / modality
    meta = metadata(zoo_dir / "model.onnx")
    spec = ModelSpec.from_json(meta["scanside.spec"])
    network = NetworkConfig(**json.loads(meta["scanside.network"]))
    runners = _runners(zoo_dir, threads, engines)
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {name: {} for name in runners}
    differences: dict[str, float] = {}
    reference = runners["torch eager FP32 (CPU)"]
    for size in tqdm(batch_sizes, desc="backends", unit="batch size"):
        batch = rng.uniform(0, 1, (size, spec.channels, spec.size, spec.size)).astype(np.float32)
        expected = reference(batch)
        for name, runner in runners.items():
            results[name][str(size)] = measure(runner, batch, warmup, iterations)
            differences[name] = max(differences.get(name, 0.0),
                                    float(np.abs(runner(batch) - expected).max()))
    torch_p50 = results["torch eager FP32 (CPU)"]["1"]["p50_ms"]
    ort_p50 = results["ONNX Runtime FP32 (CPU)"]["1"]["p50_ms"]
    report = {
        "modality": modality,
        "model": {"onnx_sha256": hashlib.sha256((zoo_dir / "model.onnx").read_bytes())
                  .hexdigest(), "input": [spec.channels, spec.size, spec.size],
                  "mirror": spec.mirror, "gflops_per_slice": round(
                      gflops_per_slice(network, spec.size) * spec.network_runs, 3),
                  "network": network.to_dict()},
        "threads": threads, "warmup": warmup,
        "latency": results,
        "max_abs_difference_to_torch_fp32": {k: float(f"{v:.3g}") for k, v in differences.items()},
        "onnx_runtime_fp32_speedup_over_torch_batch_1": round(torch_p50 / ort_p50, 2),
        "targets": {"onnx_runtime_fp32_speedup_over_torch_batch_1": 1.5,
                    "max_abs_difference": 1e-4},
        "gpu": _gpu_name(),
    }
    if chart is not None:
        plot(results, chart, f"{modality} model, {threads} CPU threads")
        report["chart"] = chart.name
    return report


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    sizes = list(next(iter(results.values())))
    fig, axis = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        p50 = [results[name][s]["p50_ms"] / int(s) for s in sizes]
        axis.bar(np.arange(len(sizes)) + i * width, p50, width, label=name)
    axis.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2, [f"batch {s}" for s in sizes])
    axis.set_ylabel("median ms per slice")
    axis.set_title(title)
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
