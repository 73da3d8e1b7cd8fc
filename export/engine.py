"""FP16 ONNX -> TensorRT engine on the box that will run it, with its manifest.

The same calls work on TensorRT 10 and 11 (see ../shared/TENSORRT.md): a strongly typed
network (11 is always strongly typed, so the FP16 types come from the ONNX file, not from
a builder flag), an optimisation profile for batches 1..N, a workspace limit and a timing
cache file reused across builds. Parser errors are reported one by one; a failed build
(`build_serialized_network` returns None) is an error, not a silent empty file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from edge.backends.manifest import EngineManifest, mismatches
from edge.backends.onnxruntime import SPEC_KEY
from edge.backends.select import engine_files, probe
from edge.errors import BackendError
from export.onnx_export import metadata, sha256

log = logging.getLogger("scanside.export")


def build_engine(onnx_path: Path, engine_path: Path, max_batch: int = 16, opt_batch: int = 4,
                 workspace_mb: int = 2048, timing_cache: Path | None = None) -> EngineManifest:
    """Build and write `engine_path` and its manifest (`<engine>.manifest.json` unless
    the caller writes it elsewhere); returns the manifest."""
    import tensorrt as trt

    facts = probe()
    if not facts.gpu:
        raise BackendError("no CUDA GPU is visible: TensorRT engines are built on the box "
                           "that runs them")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        raise BackendError(f"{onnx_path}: TensorRT's ONNX parser refused it:\n" + "\n".join(
            f"  [{e.code()}] node {e.node_name()!r} ({e.node_operator()}): {e.desc()}"
            for e in errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    profile = builder.create_optimization_profile()
    shapes = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        shapes[tensor.name] = [[1, *rest], [min(opt_batch, max_batch), *rest], [max_batch, *rest]]
        profile.set_shape(tensor.name, *shapes[tensor.name])
    if config.add_optimization_profile(profile) < 0:
        raise BackendError(f"TensorRT refused the optimisation profile {shapes}")
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    log.warning("building the TensorRT engine for %s on %s: this takes minutes", onnx_path.name,
                facts.gpu_name)
    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(f"TensorRT could not build an engine from {onnx_path} "
                           "(see the TensorRT log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    partial = engine_path.with_name(engine_path.name + ".part")
    partial.write_bytes(bytes(serialized))
    partial.replace(engine_path)
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return EngineManifest(
        onnx_sha256=sha256(onnx_path), tensorrt_version=trt.__version__,
        gpu_name=facts.gpu_name, compute_capability=facts.compute_capability,
        precision=metadata(onnx_path).get("scanside.precision", "fp32"), profile=shapes,
        workspace_mb=workspace_mb, built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build_seconds=round(time.monotonic() - started, 1),
        spec=metadata(onnx_path)[SPEC_KEY])


def ensure_engine(fp16_onnx: Path, engines_dir: Path, modality: str, **build) -> str:
    """Build the modality's engine unless a usable one is already there; says what it did.
    Used by the engine service before the appliance starts."""
    plan, manifest_path = engine_files(engines_dir, modality)
    if plan.exists() and manifest_path.exists():
        reasons = mismatches(EngineManifest.load(manifest_path), sha256(fp16_onnx), probe())
        if not reasons:
            return f"{modality}: engine {plan} matches this box"
        log.warning("%s: rebuilding %s: %s", modality, plan, "; ".join(reasons))
    manifest = build_engine(fp16_onnx, plan, **build)
    write_manifest(manifest, manifest_path)
    return f"{modality}: built {plan} in {manifest.build_seconds:.0f} s"


def write_manifest(manifest: EngineManifest, path: Path, parity: dict | None = None) -> Path:
    if parity is not None:
        manifest = replace(manifest, parity=parity)
    path.write_text(manifest.to_json() + "\n")
    return path
