"""The network's passes over whole cases while it trains: validation (pixel Dice and the
slice head's AUC) and the review of its own marks that finds its false spots and the
lesions it misses (`train.py`'s `hard_negative_fraction` and `favour_missed`). Each pass
runs the weights of the moment, in torch or, for a long pass on a CPU, in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from edge.inference.spec import ModelSpec
from models.data import CaseData, false_spot_peaks
from models.network import DetectionNet, Probabilities

Inference = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# A pass this long saves far more than the export costs (a CT slice about 25 against 95
# ms on 2 cores; the export 7 s); short ones, like the tests' few slices, stay in torch.
ONNX_RUNTIME_FROM_SLICES = 1000


def whole_case_inference(net: DetectionNet, spec: ModelSpec, device,
                         slices: int) -> Inference:
    """How training runs `net`, as its weights are now, over whole cases (its review of its
    own marks, validation): network inputs -> (lesion probabilities (N, 1, H, W), tumour
    probabilities (N, 1)). On a CPU, a pass over `slices` of at least
    ONNX_RUNTIME_FROM_SLICES runs in ONNX Runtime on the weights exported (7 s for the CT
    network), where the network runs about 3.5 times faster than in torch
    (`models/backend.py`); otherwise, and on CUDA, in torch."""
    model = Probabilities(net).eval()
    if torch.device(device).type == "cpu" and slices >= ONNX_RUNTIME_FROM_SLICES:
        import onnxruntime as ort

        from export.onnx_export import network_onnx

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(network_onnx(model, spec).SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def onnxruntime(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lesion, tumour = session.run(None, {name: images})
            return lesion, tumour
        return onnxruntime

    @torch.no_grad()
    def in_torch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lesion, tumour = model(torch.from_numpy(images).to(device))
        return lesion.cpu().numpy(), tumour.cpu().numpy()
    return in_torch


def count_slices(cases: Sequence[CaseData]) -> int:
    return sum(len(case.images) for case in cases)


def case_probabilities(run: Inference, case: CaseData,
                       batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The lesion probability maps (slices, rows, columns) and slice-head probabilities
    (slices,) `run` gives over every slice of `case`, `batch` slices at a time."""
    maps, heads = [], []
    for start in range(0, len(case.images), batch):
        lesion, tumour = run(case.inputs(range(start, min(start + batch, len(case.images)))))
        maps.append(lesion[:, 0])
        heads.append(tumour[:, 0])
    return np.concatenate(maps), np.concatenate(heads)


def validate(run: Inference, cases: list[CaseData], batch: int = 16) -> dict:
    """Pixel Dice over all validation slices and the slice-level head's AUC."""
    intersection = predicted = truth = 0.0
    scores, labels = [], []
    for case in cases:
        maps, heads = case_probabilities(run, case, batch)
        hit, mask = maps >= 0.5, case.masks.astype(bool)
        intersection += (hit & mask).sum()
        predicted += hit.sum()
        truth += mask.sum()
        scores += heads.tolist()
        labels += mask.reshape(len(mask), -1).any(axis=1).tolist()
    dice = 2 * intersection / (predicted + truth) if predicted + truth else 1.0
    area = auc(np.array(scores), np.array(labels))
    return {"val_dice": float(dice), "val_slice_auc": None if np.isnan(area) else area}


FALSE_SPOT_MARGIN_MM = 5.0    # marks this close to a lesion are its edge, not a false spot


def review(run: Inference, cases: list[CaseData], margin_px: int,
           lesions: Sequence[tuple[int, np.ndarray]] = (), batch: int = 16,
           progress: bool = False) -> tuple[list[tuple[int, int, int, int]], list[float]]:
    """One pass of `run` over every slice of `cases`: the (case, slice, row, column) of
    each spot where it marks a lesion (probability 0.5 or more) more than `margin_px`
    pixels from every true one (`false_spot_peaks`), and the highest probability it gives
    each of `lesions` ((case, voxels), in case order, as `Sampler.lesions` holds them)."""
    spots, peaks = [], []
    of_case: dict[int, list[np.ndarray]] = {}
    for c, voxels in lesions:
        of_case.setdefault(c, []).append(voxels)
    for c, case in enumerate(tqdm(cases, desc="reviewing its own marks", unit="case",
                                  disable=not progress, leave=False)):
        maps, _ = case_probabilities(run, case, batch)
        spots += [(c, *peak) for peak in false_spot_peaks(maps, case.masks, margin_px)]
        peaks += [float(maps[tuple(voxels.T)].max()) for voxels in of_case.get(c, [])]
    return spots, peaks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counted as half."""
    positive, negative = scores[labels.astype(bool)], scores[~labels.astype(bool)]
    if not len(positive) or not len(negative):
        return float("nan")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positive) * len(negative)))
