"""The manifest beside every TensorRT engine, and whether an engine fits this box.

A serialised engine runs only with the TensorRT version and on the GPU model that built
it, and only means something for the ONNX file it was built from. The manifest records
all three (plus precision, optimisation profile, build time, parity), and `mismatches`
says, in words, why an engine cannot be used here, so the appliance refuses it or the
engine service rebuilds it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edge.errors import ModelError


@dataclass(frozen=True)
class BoxFacts:
    """What this machine offers for inference; None where it lacks the part."""

    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None      # "9.0"
    cuda_provider: bool = False                # ONNX Runtime's CUDA provider is installed

    @property
    def gpu(self) -> bool:
        return self.gpu_name is not None


@dataclass(frozen=True)
class EngineManifest:
    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str                              # fp16: the ONNX file's own types
    profile: dict                               # input name -> [min, opt, max] shapes
    workspace_mb: int
    built_at: str                               # ISO 8601, UTC
    build_seconds: float
    spec: str                                   # the model's ModelSpec JSON
    version_compatible: bool = False
    parity: dict | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> EngineManifest:
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ModelError(f"{path}: not a readable engine manifest: {error}") from error

    @property
    def max_batch(self) -> int:
        return min(shapes[2][0] for shapes in self.profile.values())


def mismatches(manifest: EngineManifest, onnx_sha256: str, facts: BoxFacts) -> list[str]:
    """Why this engine cannot run here, one sentence per reason; empty if it can."""
    reasons = []
    if manifest.onnx_sha256 != onnx_sha256:
        reasons.append(f"built from another ONNX file (sha256 {manifest.onnx_sha256[:12]}, "
                       f"the model's is {onnx_sha256[:12]})")
    if facts.tensorrt_version is None:
        reasons.append("TensorRT is not installed")
    elif manifest.tensorrt_version != facts.tensorrt_version and not (
            manifest.version_compatible
            and _major(manifest.tensorrt_version) == _major(facts.tensorrt_version)):
        reasons.append(f"built with TensorRT {manifest.tensorrt_version}, this box has "
                       f"{facts.tensorrt_version}")
    if not facts.gpu:
        reasons.append("no CUDA GPU is visible")
    elif (manifest.gpu_name, manifest.compute_capability) != (facts.gpu_name,
                                                               facts.compute_capability):
        reasons.append(f"built for {manifest.gpu_name} (sm {manifest.compute_capability}), "
                       f"this box has {facts.gpu_name} (sm {facts.compute_capability})")
    return reasons


def _major(version: str) -> str:
    return version.split(".")[0]
