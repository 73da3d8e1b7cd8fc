"""Checkpoint -> ONNX (FP32) -> FP16 ONNX.

FP32: torch's exporter (torch.export based) with a dynamic batch dimension, BatchNorm
folded into the convolutions, checked by `onnx.checker` and shape inference, with the
model's preprocessing spec, thresholds, classes, version and training-data digest in the
ONNX metadata.

FP16: onnxconverter-common with FP32 inputs and outputs; normalisation, softmax and
reductions stay FP32 (`KEEP_FP32`), because their FP16 overflow is a known cause of
constant or NaN output in medical U-Nets. TensorRT 11 is strongly typed: FP16 must
already be in the ONNX file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch

from edge.backends.onnxruntime import SPEC_KEY
from edge.errors import ModelError
from edge.inference.spec import ModelSpec
from models.checkpoint import load_checkpoint
from models.network import Probabilities

OPSET = 18
INPUT, OUTPUTS = "image", ("lesion_probability", "tumour_probability")
KEEP_FP32 = ["InstanceNormalization", "BatchNormalization", "LayerNormalization", "Softmax",
             "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Exp"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def export_onnx(checkpoint: Path, out: Path, max_batch: int = 64) -> Path:
    """Write the FP32 ONNX model for a checkpoint; returns `out`."""
    loaded = load_checkpoint(checkpoint)
    spec = loaded.spec
    proto = network_onnx(Probabilities(loaded.build()).eval(), spec, max_batch)
    _set_metadata(proto, {
        SPEC_KEY: spec.to_json(),
        "scanside.network": json.dumps(loaded.network.to_dict()),
        "scanside.version": spec.version,
        "scanside.classes": json.dumps(list(spec.classes)),
        "scanside.training_data_digest": spec.training_data.get("digest", ""),
        "scanside.source_checkpoint_sha256": sha256(checkpoint),
        "scanside.precision": "fp32",
    })
    proto.producer_name, proto.doc_string = "scanside", f"{spec.name} {spec.version}"
    return _save_checked(proto, out)


def network_onnx(model: Probabilities, spec: ModelSpec, max_batch: int = 64) -> onnx.ModelProto:
    """`model` as torch's exporter writes it, with a dynamic batch dimension and no
    metadata: what `export_onnx` saves, and what training runs its reviews in."""
    example = torch.zeros(2, spec.channels, spec.size, spec.size)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    # The exporter warns, once per process, that torchvision's detection operators cannot be
    # registered without torchvision (the network uses none of them), and its optimiser logs
    # each pass at INFO, which a training run's log would otherwise carry every epoch.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    for optimiser in ("onnxscript", "onnx_ir"):
        logging.getLogger(optimiser).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT], output_names=list(OUTPUTS),
                                    dynamic_shapes={"x": {0: batch}}, optimize=True,
                                    verbose=False)
    return program.model_proto


def convert_fp16(source: Path, out: Path) -> Path:
    """Write an FP16 copy of an FP32 ONNX model: FP32 inputs and outputs, KEEP_FP32 ops in
    FP32, metadata carried over."""
    from onnxconverter_common import float16

    model = onnx.load(source)
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=float16.DEFAULT_OP_BLOCK_LIST + KEEP_FP32)
    metadata = {p.key: p.value for p in model.metadata_props}
    metadata |= {"scanside.precision": "fp16", "scanside.source_onnx_sha256": sha256(source)}
    _set_metadata(converted, metadata)
    return _save_checked(converted, out)


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}


def _set_metadata(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


def _save_checked(proto: onnx.ModelProto, out: Path) -> Path:
    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise ModelError(f"{out}: the exported model fails ONNX's checks: {error}") from error
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")
    onnx.save(inferred, partial)
    partial.replace(out)
    return out
