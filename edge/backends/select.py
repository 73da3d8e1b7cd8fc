"""Which backend runs a model here, and why.

`auto` picks TensorRT when an engine built for this model, this TensorRT and this GPU is
present, else ONNX Runtime (CUDA provider with the FP16 model where available, CPU with
the FP32 model otherwise), and says why in words the status page shows. `choose` is pure:
it takes the facts that `probe` gathers.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edge.backends.base import Backend
from edge.backends.manifest import BoxFacts, EngineManifest, mismatches
from edge.errors import BackendError, ModelError

log = logging.getLogger("scanside.backends")
KINDS = ("auto", "onnxruntime", "tensorrt")


@dataclass(frozen=True)
class Choice:
    kind: str                       # tensorrt | onnxruntime
    path: Path                      # engine or ONNX file
    why: str
    providers: tuple[str, ...] = ()
    manifest: EngineManifest | None = None


def engine_files(engines_dir: Path, modality: str) -> tuple[Path, Path]:
    """Where a modality's engine and its manifest live."""
    return engines_dir / f"{modality}.plan", engines_dir / f"{modality}.manifest.json"


def choose(requested: str, zoo_dir: Path, engines_dir: Path | None, facts: BoxFacts,
           digest=None) -> Choice:
    """The backend for the model in `zoo_dir` (model.onnx, model.fp16.onnx)."""
    if requested not in KINDS:
        raise BackendError(f"backend {requested!r}: expected one of {', '.join(KINDS)}")
    digest = digest or _sha256
    fp16, fp32 = zoo_dir / "model.fp16.onnx", zoo_dir / "model.onnx"
    reasons = []
    if requested in ("auto", "tensorrt"):
        reasons = _engine_reasons(zoo_dir, engines_dir, facts, fp16, digest)
        if not reasons:
            plan, manifest_path = engine_files(engines_dir, zoo_dir.name)
            manifest = EngineManifest.load(manifest_path)
            return Choice("tensorrt", plan, f"TensorRT engine matches this box "
                          f"({facts.gpu_name}, TensorRT {facts.tensorrt_version})",
                          manifest=manifest)
        if requested == "tensorrt":
            raise BackendError("TensorRT was requested but cannot run: " + "; ".join(reasons))
    if facts.cuda_provider and fp16.exists():
        path, providers, where = fp16, ("CUDAExecutionProvider", "CPUExecutionProvider"), \
            "ONNX Runtime on the GPU (CUDA provider, FP16 model)"
    else:
        path, providers, where = fp32, ("CPUExecutionProvider",), \
            "ONNX Runtime on the CPU (FP32 model)"
    if not path.exists():
        raise ModelError(f"no model for ONNX Runtime: {path} is missing")
    why = where if requested == "onnxruntime" else f"{where}: {'; '.join(reasons)}"
    return Choice("onnxruntime", path, why, providers)


def _engine_reasons(zoo_dir, engines_dir, facts, fp16, digest) -> list[str]:
    if engines_dir is None:
        return ["no engine folder is configured"]
    plan, manifest_path = engine_files(engines_dir, zoo_dir.name)
    if not plan.exists() or not manifest_path.exists():
        return [f"no TensorRT engine at {plan}"]
    if not fp16.exists():
        return [f"no FP16 ONNX model at {fp16} to check the engine against"]
    manifest = EngineManifest.load(manifest_path)
    reasons = mismatches(manifest, digest(fp16), facts)
    if manifest.parity is not None and not manifest.parity.get("passed"):
        reasons.append(f"the engine failed its parity check against the FP16 ONNX model "
                       f"(parity in {manifest_path})")
    return reasons


def open_backend(choice: Choice, threads: int = 0) -> Backend:
    """Load the chosen backend (in the thread that will use it)."""
    if choice.kind == "tensorrt":
        from edge.backends.tensorrt import TensorRTBackend

        backend = TensorRTBackend(choice.path, choice.manifest)
    else:
        from edge.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(choice.path, list(choice.providers), threads)
    backend.why = choice.why
    log.info("%s model: %s", backend.spec.modality, choice.why)
    return backend


def probe() -> BoxFacts:
    """What this box offers: TensorRT, a CUDA GPU, ONNX Runtime's CUDA provider."""
    return BoxFacts(_tensorrt_version(), *_gpu(), _cuda_provider())


def _tensorrt_version() -> str | None:
    try:
        import tensorrt
    except (ImportError, OSError):      # absent, or present without libnvinfer
        return None
    return tensorrt.__version__


def _gpu() -> tuple[str | None, str | None]:
    """Name and compute capability of GPU 0, from pycuda or else nvidia-smi."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        if cuda.Device.count():
            device = cuda.Device(0)
            return device.name(), ".".join(map(str, device.compute_capability()))
    except ImportError:
        pass
    except Exception as error:  # pycuda raises its own types when no driver answers
        log.debug("pycuda found no GPU: %s", error)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap",
                                  "--format=csv,noheader"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.splitlines()
            if out:
                name, capability = (part.strip() for part in out[0].split(","))
                return name, capability
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return None, None


def _cuda_provider() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
