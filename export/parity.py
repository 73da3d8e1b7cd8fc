"""Parity between two backends of one model, over series on disk.

Every conversion step (torch -> ONNX, ONNX FP32 -> FP16, FP16 ONNX -> TensorRT engine) is
checked against the step before: the same series through both, then the largest
difference between their probability maps, whether every lesion the reference finds is
found by the candidate, Dice against the ground truth for each, and whether the
candidate produced any NaN or infinity. Tolerances are explicit in `Tolerances`.
Each lesion one side finds and the other does not is listed with its series and score,
beside the detection threshold: one scored just above the threshold and lost to rounding
reads differently from a confident lesion lost to a broken conversion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.backends.base import Backend
from edge.errors import BackendError
from edge.inference.preprocess import resample
from edge.inference.series import predict, summarise
from models.data import DicomCase
from models.evaluate import match


@dataclass(frozen=True)
class Tolerances:
    max_abs_error: float | None = None       # on probabilities; None: not required
    dice_ratio: float | None = None          # candidate Dice >= ratio x reference Dice
    all_reference_lesions: bool = True       # every reference lesion found by the candidate


TORCH_TO_ONNX = Tolerances(max_abs_error=1e-4)
FP32_TO_FP16 = Tolerances(dice_ratio=0.999)
MAX_LISTED = 50         # lesions lost or extra listed in a report (all are counted)


def compare(reference: Backend, candidate: Backend, folders: Sequence[Path],
            tolerances: Tolerances) -> dict:
    """Run both backends over each series folder (DICOM + optional mask.npz)."""
    worst, lesions, found, extra, nan = 0.0, 0, 0, 0, False
    lost_scores, extra_scores = [], []
    dice = {"reference": [0.0, 0.0, 0.0], "candidate": [0.0, 0.0, 0.0]}
    for folder in tqdm(folders, desc="parity", unit="series"):
        planes, masks = DicomCase(folder).slices()
        ref_raw, cand_raw = [], []
        ref = predict(planes, reference, raw=ref_raw)
        try:
            cand = predict(planes, candidate, raw=cand_raw)
        except BackendError:        # NaN or infinity in the candidate's output
            nan = True
            continue
        for (r_lesion, r_tumour), (c_lesion, c_tumour) in zip(ref_raw, cand_raw, strict=True):
            worst = max(worst, float(np.abs(r_lesion - c_lesion).max()),
                        float(np.abs(r_tumour - c_tumour).max()))
        base = dict(series_uid="", study_uid="", modality=reference.spec.modality)
        ref_found = summarise(ref, reference, base).findings
        cand_found = summarise(cand, candidate, base).findings
        truth = [{"center_mm": f.center_mm, "diameter_mm": f.diameter_mm} for f in ref_found]
        hits = match(truth, cand_found)     # per candidate lesion, most probable first
        matched = {m for m in hits if m is not None}
        lesions, found, extra = lesions + len(truth), found + len(matched), \
            extra + len(cand_found) - len(matched)
        lost_scores += [{"series": folder.name, "score": f.probability}
                        for i, f in enumerate(ref_found) if i not in matched]
        extra_scores += [{"series": folder.name, "score": f.probability} for f, hit in zip(
            sorted(cand_found, key=lambda f: -f.probability), hits, strict=True) if hit is None]
        if (folder / "mask.npz").exists():
            by_key = {p.header.instance_key: m for p, m in zip(planes, masks, strict=True)}
            for name, run, backend in (("reference", ref, reference),
                                       ("candidate", cand, candidate)):
                _add_dice(dice[name], run, by_key, backend.spec.thresholds.lesion_probability)
    dice_ref, dice_cand = (_dice(dice[k]) for k in ("reference", "candidate"))
    report = {
        "series": len(folders),
        "reference": _describe(reference), "candidate": _describe(candidate),
        "max_abs_error": worst,
        "reference_lesions": lesions, "reference_lesions_found": found,
        "candidate_extra_lesions": extra,
        "detection_threshold": reference.spec.thresholds.detection_probability,
        "companion_threshold": reference.spec.thresholds.companion_probability,
        "lost_lesions": lost_scores[:MAX_LISTED], "extra_lesions": extra_scores[:MAX_LISTED],
        "dice_reference": dice_ref, "dice_candidate": dice_cand,
        "nan_or_inf": bool(nan),
        "tolerances": asdict(tolerances),
    }
    report["passed"] = passed(report, tolerances)
    return report


def passed(report: dict, tolerances: Tolerances) -> bool:
    ok = not report["nan_or_inf"]
    if tolerances.max_abs_error is not None:
        ok &= report["max_abs_error"] <= tolerances.max_abs_error
    if tolerances.all_reference_lesions:
        ok &= report["reference_lesions_found"] == report["reference_lesions"]
    if tolerances.dice_ratio is not None and report["dice_reference"] is not None:
        ok &= report["dice_candidate"] >= tolerances.dice_ratio * report["dice_reference"]
    return bool(ok)


def write_report(report: dict, path: Path) -> Path:
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def _describe(backend: Backend) -> dict:
    """Which backend and provider produced the numbers: a CPU FP16 run computes inside
    each node in FP32 (see ../shared/TENSORRT.md), a GPU run is the real check."""
    return {"backend": backend.name, "detail": backend.why,
            "provider": getattr(backend, "provider", None),
            "model": str(getattr(backend, "path", ""))}


def _add_dice(parts: list[float], run, by_key: dict, threshold: float) -> None:
    for plane, prediction in zip(run.planes, run.predictions, strict=True):
        mask = resample(by_key[plane.header.instance_key].astype(np.float32), prediction.grid,
                        antialias=False) >= 0.5
        hit = prediction.lesion_probability >= threshold
        parts[0] += (hit & mask).sum()
        parts[1] += hit.sum()
        parts[2] += mask.sum()


def _dice(parts: list[float]) -> float | None:
    return float(2 * parts[0] / (parts[1] + parts[2])) if parts[1] + parts[2] else None
