"""`scanside calibrate`: choose a model's operating point on a calibration set.

The network's probability maps are computed once per series; lesions are then extracted
again for every pixel threshold (the probability above which a pixel belongs to a
lesion), detection threshold (on a lesion's probability), minimum volume and way of
scoring a lesion (its pixels' peak or mean, each alone or capped by the slice head, or a
lesion classifier), and, under the classifier, a lower companion threshold for further
findings in a series the detection threshold calls positive; then scored as `scanside
eval` scores them. The chosen point is the one with the best lesion sensitivity (>= 10 mm
first, then all) among those within the false-positive and specificity limits; if none
is, the most sensitive one with at most one false positive per scan (a usual CAD
operating point); if none is, the one with the fewest false positives. It is written
into a copy of the checkpoint.
The calibration set must be neither the training nor the held-out set.

A point meets the specificity limit when its specificity's lower bound does, one standard
error below the figure measured (Wilson score bound, `SPECIFICITY_SE`): with 54 series
without a lesion, 51 called negative (0.944, bound 0.904) meets a limit of 0.9 and 50
(0.926, bound 0.882) does not. A point measured exactly at the limit falls below it on a
new set about half the time; every PET point chosen at the limit did, held out. A set
with too few such series to show the limit at all (under 9 for 0.9) needs every one of
them called negative.

The lesion classifier is a logistic regression over each candidate's measures (pixel
probabilities, size, slice head, and the contrast of the network input against a ring
around it: `LESION_FEATURES`), fitted here on the calibration set's candidates, a
candidate being positive when it hits a true lesion. The network's pixel maps saturate,
so true lesions and false spots alike peak at 1.0; what they look like in the image
around them still tells them apart. The model ships the classifier fitted on every
series, but its threshold is chosen on cross-fitted scores: the series are dealt into
`FOLDS` folds, and each series' candidates are scored by the classifier fitted on the
other folds, so no candidate is scored by a classifier that learnt from it. Scored on
the candidates it was fitted on, a classifier looks better than it is, the more so the
smaller the set (on 40 CT series, 0.03 false positives per scan where the held-out set
then gave 0.14), and the threshold chosen there is too loose.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from itertools import product
from pathlib import Path

import numpy as np
from scipy import optimize, special, stats
from tqdm import tqdm

from edge.backends.base import Backend
from edge.inference.postprocess import candidate_lesions, find_lesions, reported
from edge.inference.series import SeriesPrediction, predict, slice_spacing_mm
from edge.inference.spec import LESION_FEATURES, LESION_SCORES, LesionClassifier, ModelSpec
from edge.values import Finding
from models.checkpoint import load_checkpoint, save_checkpoint
from models.data import DicomCase
from models.evaluate import CaseResult, match, metrics

# Finer towards 1, where saturated probability maps put lesions and false spots alike
# (above 0.9 the steps are about even in logit), below 0.2, where the lesion classifier's
# scores, which are probabilities, sit for faint lesions, and 0.05 apart from 0.4 to 0.9,
# where its scores for false spots sit (one 0.1 step there moved an MR point from 4 to 1
# of 63 series without a lesion called positive).
DETECTION = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
             0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.997, 0.998, 0.999, 0.9995, 0.9998,
             0.9999)
VOLUME_MM3 = (5.0, 15.0, 30.0, 60.0, 120.0)
# Beside a finding at the detection threshold, further findings may be reported from one of
# these (below it); the series call stays the detection threshold's, so only false
# positives per scan pay for them.
COMPANION = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
# A lesion the network marks only faintly (its pixels at 0.2-0.5) is no candidate at all
# at 0.5; below it, the lesion classifier must tell such marks from faint false spots.
# On a tie the first threshold wins.
PIXEL = (0.5, 0.35, 0.2, 0.1)
L2 = 1.0            # the classifier's ridge penalty, on standardised measures
FOLDS = 5           # cross-fitting: the threshold is chosen on scores from the other folds
SPECIFICITY_SE = 1.0    # the specificity limit applies this many standard errors below


def predictions(folders: Sequence[Path], backend: Backend) -> list[tuple[SeriesPrediction, dict]]:
    """Each calibration series' prediction, with its truth."""
    out = []
    for folder in tqdm(folders, desc="calibration predictions", unit="series"):
        planes, _ = DicomCase(folder).slices()
        out.append((predict(planes, backend), json.loads((folder / "truth.json").read_text())))
    return out


def score(runs: list[tuple[list[Finding], dict]]) -> dict:
    """Metrics of each series' findings against its truth."""
    return metrics([CaseResult(truth["series_uid"], truth["modality"], truth["lesions"],
                               findings, match(truth["lesions"], findings),
                               "positive" if findings else "negative")
                    for findings, truth in runs])


def sweep(runs, spec: ModelSpec, detection=DETECTION, volumes=VOLUME_MM3,
          classifiers: Sequence[LesionClassifier] | None = None,
          companions=COMPANION) -> list[dict]:
    """Every point's metrics. The components and their measures depend only on the pixel
    threshold, a lesion's probability only on how it is scored, so each series' lesions
    are found once per way of scoring, at the loosest limits, and every detection
    threshold, companion threshold (under "classifier" only, whose scores rank findings)
    and minimum volume then keeps those that pass it. `classifiers`, one per
    run, scores each run's lesions under "classifier" (cross-fitting); by default the
    spec's own classifier scores them all."""
    rows = []
    for lesion_score, head in product(LESION_SCORES, (True, False)):
        if lesion_score == "classifier" and (head or spec.lesion_classifier is None):
            continue    # the slice head is one of the classifier's measures
        loosest = replace(spec.thresholds, detection_probability=0.0, companion_probability=None,
                          min_volume_mm3=min(volumes), lesion_score=lesion_score,
                          slice_head=head)
        scorers = (classifiers if lesion_score == "classifier" and classifiers is not None
                   else [spec.lesion_classifier] * len(runs))
        candidates = [(find_lesions(prediction.predictions, slice_spacing_mm(prediction),
                                    replace(spec, thresholds=loosest,
                                            lesion_classifier=scorer)), truth)
                      for (prediction, truth), scorer in zip(runs, scorers, strict=True)]
        for d, v in product(detection, volumes):
            if lesion_score != "classifier" and not head \
                    and d < spec.thresholds.lesion_probability:
                continue    # no lesion pixel is below the pixel threshold: same point
            kept = [([f for f in found if f.volume_mm3 >= v], truth) for found, truth in candidates]
            lower = [c for c in companions if c < d] if lesion_score == "classifier" else []
            for c in [None] + lower:
                m = score([(reported(found, d, c), truth) for found, truth in kept])
                rows.append({"lesion_score": lesion_score, "slice_head": head,
                             "detection_probability": d, "companion_probability": c,
                             "min_volume_mm3": v, **{k: m[k] for k in (
                                 "lesion_sensitivity", "lesion_sensitivity_10mm_or_more",
                                 "false_positives_per_scan", "series_specificity",
                                 "series_sensitivity")},
                             "negative_series": len(candidates) - m["positive_series"]})
    return rows


def sweep_pixels(runs, spec: ModelSpec, pixels: Sequence[float] = PIXEL,
                 companions: Sequence[float] = COMPANION
                 ) -> tuple[list[dict], dict[float, LesionClassifier | None]]:
    """`sweep` at every pixel threshold, each row naming its `pixel_threshold`; a
    threshold's lesion classifier is fitted on its own candidates, cross-fitted for its
    rows. Also each threshold's classifier fitted on every run, the one a model ships."""
    rows, classifiers = [], {}
    for pixel in tqdm(pixels, desc="pixel thresholds", unit="threshold"):
        at = replace(spec, thresholds=replace(spec.thresholds, lesion_probability=pixel))
        candidates = _candidates(runs, at)      # measured once for every fit
        classifier = classifiers[pixel] = _fit(candidates, L2)
        # A fold whose other folds hold no true or no false candidate has no classifier of
        # its own; the one fitted on every series scores it (in-sample, so a little kind).
        crossed = [own or classifier for own in _cross_fit(candidates, FOLDS, L2)]
        rows += [{"pixel_threshold": pixel, **row} for row in sweep(
            runs, replace(at, lesion_classifier=classifier), classifiers=crossed,
            companions=companions)]
    return rows, classifiers


def fit_classifier(runs, spec: ModelSpec, l2: float = L2) -> LesionClassifier | None:
    """Logistic regression from every calibration candidate's measures to whether it hits
    a true lesion (ridge-penalised, on standardised measures); None when the candidates
    are not both true and false, so there is nothing to tell apart."""
    return _fit(_candidates(runs, spec), l2)


def cross_fitted_classifiers(runs, spec: ModelSpec, folds: int = FOLDS,
                             l2: float = L2) -> list[LesionClassifier | None]:
    """One classifier per run, fitted on the candidates of the runs outside its fold
    (run i is in fold i % folds)."""
    return _cross_fit(_candidates(runs, spec), folds, l2)


def _cross_fit(candidates: list[tuple[np.ndarray, np.ndarray]], folds: int,
               l2: float) -> list[LesionClassifier | None]:
    fitted = [_fit([c for i, c in enumerate(candidates) if i % folds != k], l2)
              for k in range(min(folds, len(candidates)))]
    return [fitted[i % folds] for i in range(len(candidates))]


def _candidates(runs, spec: ModelSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per run, its candidates' measures (one row each) and whether each hits a lesion."""
    loosest = replace(spec, thresholds=replace(spec.thresholds, detection_probability=0.0,
                                               companion_probability=None,
                                               min_volume_mm3=min(VOLUME_MM3),
                                               lesion_score="peak", slice_head=False))
    per_run = []
    for prediction, truth in runs:
        found = candidate_lesions(prediction.predictions, slice_spacing_mm(prediction), loosest)
        found.sort(key=lambda pair: -pair[0].probability)
        matches = match(truth["lesions"], [finding for finding, _ in found])
        per_run.append((np.array([[m[name] for name in LESION_FEATURES] for _, m in found],
                                 float).reshape(-1, len(LESION_FEATURES)),
                        np.array([hit is not None for hit in matches], float)))
    return per_run


def _fit(candidates: list[tuple[np.ndarray, np.ndarray]], l2: float) -> LesionClassifier | None:
    if not candidates:
        return None
    x = np.concatenate([measures for measures, _ in candidates])
    y = np.concatenate([hits for _, hits in candidates])
    if not 0 < y.sum() < len(y):
        return None
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    z = (x - mean) / scale

    def loss(w):
        s = z @ w[1:] + w[0]
        gradient = 1 / (1 + np.exp(-s)) - y
        return (np.logaddexp(0, s) - y * s).sum() + l2 * (w[1:] ** 2).sum() / 2, \
            np.r_[gradient.sum(), z.T @ gradient + l2 * w[1:]]

    w = optimize.minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x
    return LesionClassifier(features=LESION_FEATURES, mean=tuple(map(float, mean)),
                            scale=tuple(map(float, scale)), weights=tuple(map(float, w[1:])),
                            bias=float(w[0]))


def specificity_bound(row: dict, standard_errors: float = SPECIFICITY_SE) -> float:
    """The Wilson score lower bound of a point's specificity, `standard_errors` below it
    (0: the specificity measured); NaN when the set has no series without a lesion."""
    negatives, specificity = row["negative_series"], row["series_specificity"]
    if standard_errors == 0 or not negatives:
        return specificity
    level = float(special.erf(standard_errors / np.sqrt(2)))     # two-sided, z = SE
    return stats.binomtest(round(specificity * negatives), negatives).proportion_ci(
        confidence_level=level, method="wilson").low


def choose(rows: list[dict], max_fp: float = 0.4, min_specificity: float = 0.9,
           fallback_fp: float = 1.0, specificity_se: float = SPECIFICITY_SE) -> dict:
    """The most sensitive point within the limits, its specificity's bound
    (`specificity_bound`) at or above `min_specificity`; or else the most sensitive with
    at most `fallback_fp` false positives per scan; or else the one with the fewest false
    positives. A point that finds no lesion at all is not an operating point, however
    specific."""
    def most_sensitive(candidates):     # NaN (a set without such lesions) ranks as none
        return max(candidates, key=lambda r: tuple(np.nan_to_num(
            (r["lesion_sensitivity_10mm_or_more"], r["lesion_sensitivity"],
             -r["false_positives_per_scan"]), nan=-1.0)))

    def specific(r):    # a set too small to show the limit asks for no false series
        perfect = specificity_bound({**r, "series_specificity": 1.0}, specificity_se)
        return not r["negative_series"] or \
            specificity_bound(r, specificity_se) >= min(min_specificity, perfect)

    rows = [r for r in rows if r["lesion_sensitivity"] > 0] or rows
    allowed = [r for r in rows if r["false_positives_per_scan"] <= max_fp and specific(r)]
    if allowed:
        return most_sensitive(allowed)
    tolerable = [r for r in rows if r["false_positives_per_scan"] <= fallback_fp]
    if tolerable:
        return most_sensitive(tolerable)
    return min(rows, key=lambda r: (r["false_positives_per_scan"],
                                    -r["lesion_sensitivity_10mm_or_more"],
                                    -r["lesion_sensitivity"]))


def calibrate(folders: Sequence[Path], checkpoint: Path, out: Path, backend: Backend,
              max_fp: float = 0.4, min_specificity: float = 0.9,
              specificity_se: float = SPECIFICITY_SE,
              companions: Sequence[float] = COMPANION) -> dict:
    """Sweep, choose, and write `out`: the checkpoint with the chosen thresholds, plus
    `<out>.calibration.json` with every point tried. `companions=()` leaves the companion
    threshold out: every finding must then reach the detection threshold itself, so no
    series' findings hang on the one score that triggers them."""
    runs = predictions(folders, backend)
    rows, classifiers = sweep_pixels(runs, backend.spec, companions=companions)
    best = choose(rows, max_fp, min_specificity, specificity_se=specificity_se)
    classifier = classifiers[best["pixel_threshold"]]
    loaded = load_checkpoint(checkpoint)
    if best["lesion_score"] == "classifier":
        loaded.spec = replace(loaded.spec, lesion_classifier=classifier)
    thresholds = replace(loaded.spec.thresholds, lesion_probability=best["pixel_threshold"],
                         detection_probability=best["detection_probability"],
                         companion_probability=best["companion_probability"],
                         min_volume_mm3=best["min_volume_mm3"],
                         lesion_score=best["lesion_score"], slice_head=best["slice_head"])
    calibration = {
        "series": len(folders), "sources": sorted({str(f.parent) for f in folders}),
        "max_fp_per_scan": max_fp, "min_specificity": min_specificity,
        "specificity_se": specificity_se, "companions": list(companions),
        "classifier_folds": FOLDS, "chosen": best}
    loaded.spec = replace(loaded.spec, thresholds=thresholds, mirror=backend.spec.mirror,
                          training_data={**loaded.spec.training_data,
                                         "calibration": calibration})
    save_checkpoint(out, loaded, slim=True)
    report = {"chosen": best, "lesion_classifier": classifier and asdict(classifier),
              "classifier_folds": FOLDS, "points": rows}
    out.with_name(out.name + ".calibration.json").write_text(json.dumps(report, indent=2))
    return report
