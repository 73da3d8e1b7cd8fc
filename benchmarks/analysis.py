"""Analysis per slice: a 512x512 CT slice from file to lesions, stage by stage.

Each slice of a synthetic 512x512 CT series goes through what the appliance does to a
slice as it lands: read (checks and decoding), preprocess (resampling, windows), infer
(batch 1) and the slice's own lesion extraction, with each backend asked for. Target
(issue 3): the shipped CT model analyses a 512x512 slice in at most 60 ms median on 2
CPU cores. Reading runs in the reader workers in parallel with inference in the
appliance, so it is reported beside the analysis, not inside it.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import deque
from pathlib import Path

from tqdm import tqdm

from benchmarks.ingest import write_ct_series
from edge.inference.zoo import DEFAULT_ZOO


def run(zoo: Path = DEFAULT_ZOO, backends=("auto", "torch", "torch CUDA"), n_slices: int = 60,
        threads: int = 2) -> dict:
    """Each backend in `backends` that this machine has; "torch CUDA" needs a CUDA GPU."""
    from edge.backends.select import choose, open_backend, probe
    from edge.inference.postprocess import lesions_on_slice
    from edge.inference.preprocess import held, image_u8, neighbours, preprocess, with_neighbours
    from edge.inference.spec import ModelSpec
    from edge.ingest.reader import read_file
    from edge.values import SlicePrediction
    from export.onnx_export import metadata
    from models.network import NetworkConfig, gflops_per_slice

    zoo_dir = Path(zoo) / "CT"
    meta = metadata(zoo_dir / "model.onnx")
    declared = ModelSpec.from_json(meta["scanside.spec"])
    report: dict = {"slices": n_slices, "threads": threads, "matrix": [512, 512],
                    "mirror": declared.mirror, "gflops_per_slice": round(gflops_per_slice(
                        NetworkConfig(**json.loads(meta["scanside.network"])),
                        declared.size) * declared.network_runs, 3),
                    "target_median_ms": 60, "backends": {}}
    with tempfile.TemporaryDirectory(prefix="scanside-bench-") as folder:
        paths = write_ct_series(Path(folder), n_slices)
        for kind in backends:
            if kind.startswith("torch"):
                import torch

                from models.torch_backend import TorchBackend

                device = "cuda" if kind == "torch CUDA" else "cpu"
                if device == "cuda" and not torch.cuda.is_available():
                    continue
                backend = TorchBackend(zoo_dir / "model.pt", device, threads)
            else:
                backend = open_backend(choose(kind, zoo_dir, None, probe()), threads)
            stages: dict[str, list[float]] = {"read": [], "preprocess": [], "infer": [],
                                              "lesions": [], "analysis": []}
            spec = backend.spec
            recent: deque = deque(maxlen=spec.slices)
            for i, path in enumerate(tqdm(paths, desc=f"analysis ({kind})", unit="slice")):
                t0 = time.perf_counter()
                (plane,) = read_file(str(path))
                t1 = time.perf_counter()
                image, grid = preprocess(plane, spec)
                recent.append((held(image, spec), grid))
                t2 = time.perf_counter()
                # the slice this one completes: itself for a 2D model, the one k back for
                # a 2.5D one, seen with the neighbours that have arrived
                middle = len(recent) // 2
                image, grid = recent[middle]
                lesion, tumour = backend.infer(with_neighbours(image, [
                    recent[j][0] for j in neighbours(middle, len(recent), spec.context_slices)],
                    spec.intensity.image_channels)[None])
                t3 = time.perf_counter()
                prediction = SlicePrediction(plane.header.instance_key,
                                             (lesion[0, 0] * 255).astype("uint8"),
                                             float(tumour[0, 0]), grid,
                                             image_u8(image, spec.intensity))
                lesions_on_slice(prediction, spec)
                t4 = time.perf_counter()
                if i < 5:
                    continue            # warm-up
                for name, value in (("read", t1 - t0), ("preprocess", t2 - t1),
                                    ("infer", t3 - t2), ("lesions", t4 - t3),
                                    ("analysis", t4 - t1)):
                    stages[name].append(value * 1e3)
            report["backends"][kind] = {
                "detail": backend.why,
                **{f"{name}_median_ms": round(statistics.median(v), 2)
                   for name, v in stages.items()},
                "analysis_p95_ms": round(sorted(stages["analysis"])[
                    int(0.95 * (len(stages["analysis"]) - 1))], 2)}
            backend.close()
    return report
