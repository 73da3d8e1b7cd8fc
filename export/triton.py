"""A Triton Inference Server model repository, for re-analysing archives in a datacenter.

    <repository>/scanside_<modality>/config.pbtxt
    <repository>/scanside_<modality>/1/model.onnx      (or model.plan with --engine)

The batch dimension is Triton's (`max_batch_size`), with dynamic batching; the model's
preprocessing spec travels as a config parameter, since clients must preprocess exactly
as the appliance does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edge.backends.onnxruntime import SPEC_KEY
from edge.inference.spec import ModelSpec
from export.onnx_export import INPUT, OUTPUTS, metadata


def export_triton(onnx_path: Path, repository: Path, max_batch: int = 32,
                  engine: Path | None = None, gpus: int = 1) -> Path:
    """Write one model into a Triton repository; returns the model's folder."""
    spec = ModelSpec.from_json(metadata(onnx_path)[SPEC_KEY], str(onnx_path))
    name = f"scanside_{spec.modality.lower()}"
    folder = repository / name
    version = folder / "1"
    version.mkdir(parents=True, exist_ok=True)
    if engine is not None:
        shutil.copyfile(engine, version / "model.plan")
    else:
        shutil.copyfile(onnx_path, version / "model.onnx")
    (folder / "config.pbtxt").write_text(config_pbtxt(name, spec, max_batch, engine is not None,
                                                      gpus))
    return folder


def config_pbtxt(name: str, spec: ModelSpec, max_batch: int, plan: bool, gpus: int) -> str:
    size = spec.size
    kind = "KIND_GPU" if gpus else "KIND_CPU"
    return f"""name: "{name}"
platform: "{"tensorrt_plan" if plan else "onnxruntime_onnx"}"
max_batch_size: {max_batch}
input [
  {{ name: "{INPUT}" data_type: TYPE_FP32 dims: [ {spec.channels}, {size}, {size} ] }}
]
output [
  {{ name: "{OUTPUTS[0]}" data_type: TYPE_FP32 dims: [ 1, {size}, {size} ] }},
  {{ name: "{OUTPUTS[1]}" data_type: TYPE_FP32 dims: [ 1 ] }}
]
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [ {{ kind: {kind} count: {max(gpus, 1)} }} ]
parameters {{ key: "{SPEC_KEY}" value: {{ string_value: {json.dumps(spec.to_json())} }} }}
"""
