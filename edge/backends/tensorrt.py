"""TensorRT backend (TensorRT 10 and 11, with pycuda), for the GPU box.

Written from NVIDIA's documentation and samples (see ../shared/TENSORRT.md); the facts
that matter:
- tensorrt and pycuda are imported here only, when the backend is created;
- the CUDA context is the device's primary context, pushed by the thread that owns the
  backend and kept current for its life; every TensorRT call, destruction included,
  happens while it is current; no pycuda.autoinit;
- buffers are sized once at the profile's maximum batch: page-locked host memory,
  device memory, `set_tensor_address` once; one non-default stream;
- per batch: `set_input_shape`, copy in, `execute_async_v3`, copy out, synchronise;
  `set_input_shape`, `set_tensor_address` and `execute_async_v3` report failure by
  returning False, so every return is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.backends.base import Backend, TensorInfo
from edge.backends.manifest import EngineManifest
from edge.errors import BackendError
from edge.inference.spec import ModelSpec


@dataclass(frozen=True)
class TensorIO:
    """One engine tensor as the engine describes it (-1 for a dynamic size)."""

    name: str
    is_input: bool
    dtype: str                                 # numpy dtype name
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], ...] | None = None   # (min, opt, max) for inputs


@dataclass(frozen=True)
class Buffer:
    name: str
    shape: tuple[int, ...]                     # at the maximum batch
    dtype: str
    nbytes: int


def plan_buffers(tensors: list[TensorIO], max_batch: int) -> list[Buffer]:
    """Buffer sizes for every tensor at the largest batch the profile allows.

    Only the batch (first) dimension may be dynamic; anything else is a model the
    appliance cannot size in advance, and is refused.
    """
    buffers = []
    for t in tensors:
        if any(d < 0 for d in t.shape[1:]):
            raise BackendError(f"engine tensor {t.name!r} has dynamic non-batch dimensions "
                               f"{t.shape}: only the batch may vary")
        if t.is_input and t.profile and t.profile[2][0] < max_batch:
            raise BackendError(f"engine input {t.name!r} allows batches up to "
                               f"{t.profile[2][0]}, {max_batch} were asked for")
        shape = (max_batch, *t.shape[1:])
        buffers.append(Buffer(t.name, shape, t.dtype,
                              int(np.prod(shape)) * np.dtype(t.dtype).itemsize))
    return buffers


class TensorRTBackend(Backend):
    """Runs a serialised TensorRT engine. Create, use and close it in one thread."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, manifest: EngineManifest, device: int = 0):
        try:
            import pycuda.driver as cuda
            import tensorrt as trt
        except ImportError as error:
            raise BackendError(f"the TensorRT backend needs tensorrt and pycuda: {error}") \
                from error
        self._cuda, self._trt = cuda, trt
        self.spec = ModelSpec.from_json(manifest.spec, f"{engine_path} manifest")
        self.path = Path(engine_path)
        cuda.init()
        self._context_stack = cuda.Device(device).retain_primary_context()
        self._context_stack.push()
        try:
            self._load(manifest)
            self.check_input(engine_path)
        except BaseException:
            self._release()
            raise
        self.why = (f"TensorRT {trt.__version__} engine for {manifest.gpu_name} "
                    f"(sm {manifest.compute_capability}), {manifest.precision}")

    def _load(self, manifest: EngineManifest) -> None:
        cuda, trt = self._cuda, self._trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{self.path}: TensorRT {trt.__version__} could not "
                               "deserialise the engine (built by another version or GPU?)")
        self._context = self._engine.create_execution_context()
        self.tensors = describe(self._engine, trt)
        inputs = [t for t in self.tensors if t.is_input]
        if len(inputs) != 1:
            raise BackendError(f"{self.path}: expected one input tensor, found "
                               f"{[t.name for t in inputs]}")
        self.input = inputs[0]
        self.max_batch = self.input.profile[2][0]
        _check(self._context.set_input_shape(self.input.name, self.input.profile[2]),
               f"set_input_shape({self.input.name}, {self.input.profile[2]})")
        self._host, self._device = {}, {}
        for buffer in plan_buffers(self.tensors, self.max_batch):
            concrete = tuple(self._context.get_tensor_shape(buffer.name))
            host = cuda.pagelocked_empty(int(np.prod(concrete)), np.dtype(buffer.dtype))
            device = cuda.mem_alloc(host.nbytes)
            _check(self._context.set_tensor_address(buffer.name, int(device)),
                   f"set_tensor_address({buffer.name})")
            self._host[buffer.name], self._device[buffer.name] = host, device
        self._stream = cuda.Stream()

    def inputs(self) -> list[TensorInfo]:
        return [TensorInfo(self.input.name, (None, *self.input.shape[1:]), self.input.dtype)]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(batch) > self.max_batch:
            parts = [self.run(batch[i:i + self.max_batch])
                     for i in range(0, len(batch), self.max_batch)]
            return tuple(np.concatenate(p) for p in zip(*parts, strict=True))
        cuda, n = self._cuda, len(batch)
        name = self.input.name
        _check(self._context.set_input_shape(name, (n, *self.input.shape[1:])),
               f"set_input_shape({name}, batch {n})")
        host = self._host[name][:batch.size]
        host[:] = np.ascontiguousarray(batch, dtype=host.dtype).ravel()
        cuda.memcpy_htod_async(self._device[name], host, self._stream)
        _check(self._context.execute_async_v3(self._stream.handle), "execute_async_v3")
        outputs = {}
        for t in self.tensors:
            if t.is_input:
                continue
            shape = tuple(self._context.get_tensor_shape(t.name))
            view = self._host[t.name][:int(np.prod(shape))]
            cuda.memcpy_dtoh_async(view, self._device[t.name], self._stream)
            outputs[t.name] = (view, shape)
        self._stream.synchronize()
        lesion, tumour = (outputs[key] for key in ("lesion_probability", "tumour_probability"))
        return (lesion[0].reshape(lesion[1]).astype(np.float32),
                tumour[0].reshape(tumour[1]).astype(np.float32))

    def close(self) -> None:
        if getattr(self, "_context_stack", None) is not None:
            self._release()

    def _release(self) -> None:
        # Free TensorRT objects and buffers while the context is still current.
        for attribute in ("_stream", "_device", "_host", "_context", "_engine", "_runtime"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        self._context_stack.pop()
        self._context_stack.detach()
        self._context_stack = None


def describe(engine, trt) -> list[TensorIO]:
    """The engine's I/O tensors by name (the TensorRT 10+ API)."""
    tensors = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        profile = None
        if is_input:
            profile = tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, 0))
        tensors.append(TensorIO(name, is_input, np.dtype(trt.nptype(
            engine.get_tensor_dtype(name))).name, tuple(engine.get_tensor_shape(name)),
            profile))
    return tensors


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise BackendError(f"TensorRT {what} failed (see the TensorRT log above)")
