"""`scanside eval`: lesion- and series-level performance on series with ground truth.

Each series is analysed exactly as `scanside analyze` does it. A finding hits a true
lesion when its centre lies within max(5 mm, 0.75 x the lesion's diameter) of the
lesion's centre; findings are matched greedily from the most probable, each lesion at
most once, so the matches at any probability cut-off are those of the full list cut
there. Reported per modality: lesion sensitivity (all, >= 10 mm) and false positives per
scan at the model's operating point; the FROC curve, over every candidate lesion whatever
its probability (the operating point is one point of it); series-level sensitivity,
specificity and AUC; and pixel Dice on the network grid. MR lesion figures are also
given per weighting (T1, T2 or unknown, as the series' tags say; see SliceHeader), since a
lesion is darker than its organ in one and brighter in the other; and where any series
records a contrast agent (ContrastBolusAgent), lesion figures are given for the series
with one and those without apart, since enhancement brings organs up to the brightness
of some lesions.

Each true lesion's conspicuity is measured too: how many standard deviations of its
surroundings (a shell 4-12 mm outside it, other lesions left out) the mean network input
inside it differs from theirs. It says whether a missed lesion was faint in what the
network saw, and sensitivity is reported per band of it (`CONSPICUITY_SD`); its sign
says whether the lesion is brighter or darker than its surroundings, and lesions found are
counted per polarity too (a network may learn one better than the other). Where the truth
names each lesion's kind and organ (synthetic series do), lesions found are counted per
kind and per organ as well. Lesions are also counted by whether the network made a
candidate of them at all (pixels above the pixel threshold, the minimum volume met,
whatever the lesion score): a lesion with no candidate is the network's miss, which no
threshold or lesion classifier can recover; one with a candidate but not found was scored
below the operating point. Every missed lesion and every false positive (its case,
centre, size, probability and slices) is listed, and with `--overlays` drawn on its
slice (`review_overlays`), for review against the images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edge.backends.base import Backend
from edge.inference.postprocess import find_lesions
from edge.inference.preprocess import resample
from edge.inference.series import SeriesPrediction, predict, slice_spacing_mm, summarise
from edge.values import Finding, SlicePrediction
from edge.web.overlay import overlay_png
from models.data import SHELL_MM, DicomCase
from models.validation import auc

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
CONSPICUITY_SD = (2.0, 3.0)         # bands: below 2 SD, 2-3 SD, 3 SD or more
CONSPICUITY_BANDS = (f"below {CONSPICUITY_SD[0]:g} SD",
                     f"{CONSPICUITY_SD[0]:g}-{CONSPICUITY_SD[1]:g} SD",
                     f"{CONSPICUITY_SD[1]:g} SD or more")


def hit_radius_mm(diameter_mm: float) -> float:
    return max(5.0, 0.75 * diameter_mm)


def match(truth: Sequence[dict], findings: Sequence[Finding]) -> list[int | None]:
    """For each finding (most probable first), the index of the lesion it hits, or None."""
    taken: set[int] = set()
    matches: list[int | None] = []
    for finding in sorted(findings, key=lambda f: -f.probability):
        best, best_distance = None, np.inf
        for i, lesion in enumerate(truth):
            distance = float(np.linalg.norm(np.subtract(finding.center_mm, lesion["center_mm"])))
            if i not in taken and distance <= hit_radius_mm(lesion["diameter_mm"]) \
                    and distance < best_distance:
                best, best_distance = i, distance
        if best is not None:
            taken.add(best)
        matches.append(best)
    return matches


@dataclass
class CaseResult:
    name: str
    modality: str
    truth: list[dict]
    findings: list[Finding]                   # most probable first
    matches: list[int | None]                 # lesion hit by each finding
    status: str
    dice_parts: tuple[float, float, float] = (0.0, 0.0, 0.0)   # intersection, predicted, true
    reason: str | None = None
    candidates: list[Finding] | None = None   # below the detection threshold too (None:
                                              # the findings); the FROC walks down these
    mr_weighting: str = ""                    # "T1", "T2" or "" (unknown; not MR)
    conspicuity: list[float] = field(default_factory=list)   # per true lesion (SD, signed)
    source: str = ""                          # the folder its series folder lies in
    contrast_agent: str = ""                  # as the series' tags say; "" none recorded
    overlays: dict[str, bytes] = field(default_factory=dict)   # name -> PNG, when asked

    @cached_property
    def candidate_hits(self) -> set[int] | None:
        """The lesions some candidate hits; None where the candidates were not kept."""
        return None if self.candidates is None else set(match(self.truth, self.candidates))

    @property
    def false_positives(self) -> list[Finding]:
        """The findings that hit no lesion, most probable first."""
        return [f for f, m in zip(self.findings, self.matches, strict=True) if m is None]

    @property
    def score(self) -> float:
        return max((f.probability for f in self.findings), default=0.0)

    def marks(self) -> list[tuple[float, bool]]:
        """(probability, hit) of every candidate lesion, for the FROC."""
        if self.candidates is None:
            return [(f.probability, m is not None)
                    for f, m in zip(self.findings, self.matches, strict=True)]
        candidates = sorted(self.candidates, key=lambda f: -f.probability)
        return [(f.probability, m is not None)
                for f, m in zip(candidates, match(self.truth, candidates), strict=True)]


def evaluate_case(folder: Path, backend: Backend, overlays: bool = False) -> CaseResult:
    """Analyse one series folder (DICOM + truth.json + mask.npz) and score it; with
    `overlays`, also draw each missed lesion and false positive (`review_overlays`)."""
    case = DicomCase(folder)
    truth = json.loads((folder / "truth.json").read_text())
    planes, masks = case.slices()
    prediction = predict(planes, backend)
    result = summarise(prediction, backend, dict(
        series_uid=truth["series_uid"], study_uid=truth.get("study_uid", ""),
        modality=truth["modality"], n_slices=len(planes)))
    by_key = {p.header.instance_key: m for p, m in zip(planes, masks, strict=True)}
    threshold = backend.spec.thresholds.lesion_probability
    intersection = predicted = true = 0.0
    true_masks = []
    for plane, slice_prediction in zip(prediction.planes, prediction.predictions, strict=True):
        mask = resample(by_key[plane.header.instance_key].astype(np.float32),
                        slice_prediction.grid, antialias=False) >= 0.5
        true_masks.append(mask)
        hit = slice_prediction.lesion_probability >= threshold
        intersection += (hit & mask).sum()
        predicted += hit.sum()
        true += mask.sum()
    findings = sorted(result.findings, key=lambda f: -f.probability)
    every = replace(backend.spec, thresholds=replace(backend.spec.thresholds,
                                                     detection_probability=0.0,
                                                     companion_probability=None))
    candidates = find_lesions(prediction.predictions, slice_spacing_mm(prediction), every)
    scored = CaseResult(folder.name, truth["modality"], truth["lesions"], findings,
                        match(truth["lesions"], findings), result.status,
                        (intersection, predicted, true), result.reason, candidates,
                        planes[0].header.mr_weighting,
                        [conspicuity(lesion, prediction.predictions, true_masks)
                         for lesion in truth["lesions"]], str(folder.parent),
                        contrast_agent=planes[0].header.contrast_agent)
    if overlays:
        scored.overlays = review_overlays(scored, prediction, true_masks, threshold)
    return scored


def review_overlays(case: CaseResult, prediction: SeriesPrediction,
                    true_masks: Sequence[np.ndarray], threshold: float) -> dict[str, bytes]:
    """A PNG of the slice through each missed lesion ("missed-<its index in the truth>",
    the slice nearest its centre) and of each false positive ("false-<its rank among the
    series' false positives>", its largest slice): the network input, the probability
    as heat, the model's outline in green and the true lesions' in cyan."""
    def draw(k: int, caption: str) -> bytes:
        slice_prediction = prediction.predictions[k]
        return overlay_png(slice_prediction.image_u8, slice_prediction.lesion_u8, threshold,
                           caption=caption, truth=true_masks[k])

    images = {}
    for rank, finding in enumerate(case.false_positives):
        images[f"false-{rank}"] = draw(finding.key_slice, f"false positive: p "
                                       f"{finding.probability:.2f}, "
                                       f"{finding.diameter_mm:.0f} mm")
    for i, lesion in enumerate(case.truth):
        if i not in case.matches:
            k = int(np.argmin([abs(np.subtract(lesion["center_mm"], plane.header.position_mm)
                                   @ plane.header.normal) for plane in prediction.planes]))
            words = " ".join(str(lesion[key]) for key in ("kind", "organ") if key in lesion)
            images[f"missed-{i}"] = draw(k, f"missed: {lesion['diameter_mm']:.0f} mm {words}")
    return images


def conspicuity(lesion: dict, predictions: Sequence[SlicePrediction],
                true_masks: Sequence[np.ndarray]) -> float:
    """How far a true lesion stands out in the network input (its first channel): the
    mean inside it (voxels of the true mask within its radius of its centre, or the
    nearest voxel when it is smaller than one) minus the mean of the shell `SHELL_MM`
    beyond its radius, in standard deviations of the shell (the deviation being at least
    one grey level): positive for a lesion brighter than its surroundings, negative for a
    darker one. NaN when the input was not kept or the shell is off the grid."""
    centre, radius = np.asarray(lesion["center_mm"], float), lesion["diameter_mm"] / 2
    inside, shell, nearest = [], [], (np.inf, np.nan)
    for prediction, mask in zip(predictions, true_masks, strict=True):
        if prediction.image_u8 is None:
            return float("nan")
        grid = prediction.grid
        u_step, v_step = np.asarray(grid.u_step_mm), np.asarray(grid.v_step_mm)
        normal = np.cross(u_step, v_step) / grid.spacing_mm ** 2
        offset = centre - np.asarray(grid.origin_mm)
        height = float(offset @ normal)
        if abs(height) > radius + SHELL_MM[1]:
            continue
        cu, cv = offset @ u_step / grid.spacing_mm ** 2, offset @ v_step / grid.spacing_mm ** 2
        u, v = np.ogrid[:grid.size, :grid.size]
        distance = np.sqrt(grid.spacing_mm ** 2 * ((u - cu) ** 2 + (v - cv) ** 2) + height ** 2)
        image = prediction.image_u8.astype(float)
        inside.append(image[mask & (distance <= radius)])
        shell.append(image[~mask & (distance > radius + SHELL_MM[0])
                           & (distance <= radius + SHELL_MM[1])])
        closest = np.unravel_index(np.argmin(distance), distance.shape)
        nearest = min(nearest, (float(distance[closest]), float(image[closest])))
    inside = np.concatenate(inside) if inside else np.empty(0)
    shell = np.concatenate(shell) if shell else np.empty(0)
    if len(shell) < 8:                  # a slice was near it, so `nearest` is set
        return float("nan")
    mean = inside.mean() if len(inside) else nearest[1]
    return float((mean - shell.mean()) / max(shell.std(), 1.0))


def evaluate(folders: Sequence[Path], backend: Backend,
             overlays: bool = False) -> list[CaseResult]:
    return [evaluate_case(f, backend, overlays)
            for f in tqdm(folders, desc="evaluating", unit="series")]


def froc(cases: Sequence[CaseResult]) -> list[dict]:
    """(threshold, sensitivity, false positives per scan) at every distinct candidate
    probability. Candidates with equal probabilities (saturated at 1.0, say) pass or fail
    a threshold together, so a point is taken only after the last of them."""
    lesions = sum(len(c.truth) for c in cases)
    marks = sorted((mark for c in cases for mark in c.marks()), reverse=True)
    points, hits, false = [], 0, 0
    for i, (probability, hit) in enumerate(marks):
        hits += hit
        false += not hit
        if i + 1 == len(marks) or marks[i + 1][0] != probability:
            points.append({"threshold": probability, "sensitivity": hits / max(lesions, 1),
                           "fp_per_scan": false / max(len(cases), 1)})
    return points


def sensitivity_at(points: Sequence[dict], fp_per_scan: float) -> float:
    """The best sensitivity with no more than `fp_per_scan` false positives per scan."""
    return max((p["sensitivity"] for p in points if p["fp_per_scan"] <= fp_per_scan), default=0.0)


def lesion_metrics(cases: Sequence[CaseResult]) -> dict:
    """Lesion sensitivity (all, >= 10 mm), false positives per scan and the FROC."""
    lesions = [(lesion, i in c.matches) for c in cases for i, lesion in enumerate(c.truth)]
    large = [hit for lesion, hit in lesions if lesion["diameter_mm"] >= 10]
    points = froc(cases)
    return {
        "series": len(cases), "lesions": len(lesions), "lesions_10mm_or_more": len(large),
        "lesion_sensitivity": _ratio(sum(hit for _, hit in lesions), len(lesions)),
        "lesion_sensitivity_10mm_or_more": _ratio(sum(large), len(large)),
        "false_positives_per_scan": sum(len(c.false_positives) for c in cases)
        / max(len(cases), 1),
        "froc": {f"{rate:g}": sensitivity_at(points, rate) for rate in FROC_FP_RATES},
        "by_conspicuity": _by_conspicuity(cases),
        "by_kind": _found_by(cases, lambda c, i: c.truth[i].get("kind")),
        "by_organ": _found_by(cases, lambda c, i: c.truth[i].get("organ")),
        "by_polarity": _found_by(cases, _polarity),
        "by_candidate": _found_by(cases, _candidate),
    }


def _by_conspicuity(cases: Sequence[CaseResult]) -> dict:
    """Lesions and sensitivity per band of conspicuity (lesions not measured left out)."""
    bands = {name: [] for name in CONSPICUITY_BANDS}
    for c in cases:
        for i, value in enumerate(c.conspicuity):
            if not math.isnan(value):
                band = CONSPICUITY_BANDS[int(np.searchsorted(CONSPICUITY_SD, abs(value),
                                                             "right"))]
                bands[band].append(i in c.matches)
    return {name: {"lesions": len(hits), "sensitivity": _ratio(sum(hits), len(hits))}
            for name, hits in bands.items()}


def _found_by(cases: Sequence[CaseResult],
              group: Callable[[CaseResult, int], str | None]) -> dict:
    """Lesions found per group (`group` of a case and its lesion's index: a truth field
    such as the kind or the organ, or the polarity), all and >= 10 mm; lesions without a
    group are left out, so {} when none has one (a Decathlon mask names no kind)."""
    groups: dict[str, list[tuple[bool, bool]]] = {}
    for c in cases:
        for i, lesion in enumerate(c.truth):
            if (name := group(c, i)) is not None:
                groups.setdefault(name, []).append((lesion["diameter_mm"] >= 10, i in c.matches))
    return {name: {"lesions": len(rows), "found": sum(hit for _, hit in rows),
                   "lesions_10mm_or_more": sum(large for large, _ in rows),
                   "found_10mm_or_more": sum(large and hit for large, hit in rows)}
            for name, rows in sorted(groups.items())}


def series_metrics(cases: Sequence[CaseResult]) -> dict:
    """Series-level sensitivity, specificity and AUC: is there a lesion in the series?"""
    positive = np.array([bool(c.truth) for c in cases])
    called = np.array([c.status == "positive" for c in cases])
    return {"positive_series": int(positive.sum()),
            "series_sensitivity": _ratio(int((called & positive).sum()), int(positive.sum())),
            "series_specificity": _ratio(int((~called & ~positive).sum()),
                                         int((~positive).sum())),
            "series_auc": auc(np.array([c.score for c in cases]), positive)}


def metrics(cases: Sequence[CaseResult]) -> dict:
    """Everything the model card reports, for one modality."""
    inter, pred, true = (sum(c.dice_parts[k] for c in cases) for k in range(3))
    figures = {
        **lesion_metrics(cases), **series_metrics(cases),
        "dice": 2 * inter / (pred + true) if pred + true else 1.0,
        "failed_series": [c.name for c in cases if c.status == "failed"],
        "missed": [{"case": c.name, **lesion, "conspicuity_sd": _conspicuity(c, i),
                    "candidate": _candidate(c, i)}
                   for c in cases for i, lesion in enumerate(c.truth)
                   if i not in c.matches],
        "false_positives": [{"case": c.name, **f.to_json(), "series_has_lesions": bool(c.truth)}
                            for c in cases for f in c.false_positives],
    }
    by_source = {source: [c for c in cases if c.source == source]
                 for source in sorted({c.source for c in cases})}
    if len(by_source) > 1:                     # several sets pooled: each one's figures too
        figures["by_source"] = {source: {**lesion_metrics(group), **series_metrics(group)}
                                for source, group in by_source.items()}
    if any(c.modality == "MR" for c in cases):
        weightings = sorted({c.mr_weighting for c in cases})
        figures["by_mr_weighting"] = {
            w or "unknown": lesion_metrics([c for c in cases if c.mr_weighting == w])
            for w in weightings}
    if any(c.contrast_agent for c in cases):
        figures["by_contrast"] = {
            name: lesion_metrics(group) for name, group in (
                ("contrast agent", [c for c in cases if c.contrast_agent]),
                ("none recorded", [c for c in cases if not c.contrast_agent])) if group}
    return figures


def _measured(case: CaseResult, i: int) -> float:
    """Lesion i's conspicuity; NaN where it was not measured."""
    return case.conspicuity[i] if i < len(case.conspicuity) else float("nan")


def _polarity(case: CaseResult, i: int) -> str | None:
    """"brighter" or "darker" than its surroundings in the network input, where measured."""
    value = _measured(case, i)
    return None if math.isnan(value) else "brighter" if value > 0 else "darker"


def _candidate(case: CaseResult, i: int) -> str | None:
    """"a candidate" where one of the series' candidate lesions hits lesion i, "no
    candidate" where none does; None where the candidates were not kept."""
    if case.candidate_hits is None:
        return None
    return "a candidate" if i in case.candidate_hits else "no candidate"


def _conspicuity(case: CaseResult, i: int) -> float | None:
    value = _measured(case, i)
    return None if math.isnan(value) else round(value, 2)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")


@dataclass
class Report:
    by_modality: dict = field(default_factory=dict)

    def table(self) -> str:
        rows = ["| modality | series | lesions | sens. all | sens. >=10 mm | FP/scan | "
                "sens. @0.5 FP | series sens. | series spec. | AUC | Dice |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for modality, m in sorted(self.by_modality.items()):
            rows.append(
                f"| {modality} | {m['series']} | {m['lesions']} | {m['lesion_sensitivity']:.3f} "
                f"| {m['lesion_sensitivity_10mm_or_more']:.3f} | "
                f"{m['false_positives_per_scan']:.2f} | {m['froc']['0.5']:.3f} | "
                f"{m['series_sensitivity']:.3f} | {m['series_specificity']:.3f} | "
                f"{m['series_auc']:.3f} | {m['dice']:.3f} |")
        rows += self._groups("by_mr_weighting", "weighting", [("sens. @0.5 FP", "froc")])
        rows += self._groups("by_contrast", "contrast", [("sens. @0.5 FP", "froc")])
        rows += self._groups("by_source", "set", [("series spec.", "series_specificity"),
                                                  ("AUC", "series_auc")])
        rows += ["", "Lesion sensitivity by conspicuity (lesions in brackets):", "",
                 "| modality | " + " | ".join(CONSPICUITY_BANDS) + " |",
                 "|---" * (len(CONSPICUITY_BANDS) + 1) + "|"]
        rows += ["| " + " | ".join([modality] + [f"{b['sensitivity']:.3f} ({b['lesions']})"
                                                 for b in m["by_conspicuity"].values()]) + " |"
                 for modality, m in sorted(self.by_modality.items())]
        for key, caption in (("kind", "kind"), ("organ", "organ"), ("polarity", "polarity"),
                             ("candidate", "whether the network made a candidate of them")):
            found = [(modality, name, k) for modality, m in sorted(self.by_modality.items())
                     for name, k in m.get(f"by_{key}", {}).items()]
            if found:
                rows += ["", f"Lesions found by {caption}:", "",
                         f"| modality | {key} | found | found >= 10 mm |", "|---|---|---|---|"]
                rows += [f"| {modality} | {name} | {k['found']} of {k['lesions']} | "
                         f"{k['found_10mm_or_more']} of {k['lesions_10mm_or_more']} |"
                         for modality, name, k in found]
        return "\n".join(rows)

    def _groups(self, key: str, label: str, extra: list[tuple[str, str]]) -> list[str]:
        """A table of each modality's groups under `key` (MR weightings, pooled sets):
        their lesion figures and the `extra` (heading, figure) columns."""
        groups = [(modality, name, g) for modality, m in sorted(self.by_modality.items())
                  for name, g in m.get(key, {}).items()]
        if not groups:
            return []
        columns = [("sens. all", "lesion_sensitivity"),
                   ("sens. >=10 mm", "lesion_sensitivity_10mm_or_more"),
                   ("FP/scan", "false_positives_per_scan"), *extra]
        headings = ["modality", label, "series", "lesions", *(h for h, _ in columns)]

        def cell(g: dict, figure: str) -> str:
            value = g["froc"]["0.5"] if figure == "froc" else g[figure]
            return f"{value:.2f}" if figure == "false_positives_per_scan" else f"{value:.3f}"

        return ["", "| " + " | ".join(headings) + " |", "|---" * len(headings) + "|"] + [
            "| " + " | ".join([modality, name, str(g["series"]), str(g["lesions"]),
                               *(cell(g, figure) for _, figure in columns)]) + " |"
            for modality, name, g in groups]


def write_report(results: dict[str, list[CaseResult]], out: Path) -> Report:
    """eval.json, eval.md (the table) and froc.png in `out`, and the cases' review
    overlays in `out/overlays` as <case>-<name>.png (in a folder per set when several
    were pooled, since two sets may name their series alike)."""
    out.mkdir(parents=True, exist_ok=True)
    cases = [case for group in results.values() for case in group]
    pooled = len({case.source for case in cases}) > 1
    for case in cases:
        folder = out / "overlays" / (Path(case.source).name if pooled else "")
        for name, png in case.overlays.items():
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{case.name}-{name}.png").write_bytes(png)
    report = Report({modality: metrics(cases) for modality, cases in results.items()})
    (out / "eval.json").write_text(json.dumps(report.by_modality, indent=2) + "\n")
    (out / "eval.md").write_text(report.table() + "\n")
    plot_froc({m: froc(c) for m, c in results.items()}, out / "froc.png",
              {m: (r["false_positives_per_scan"], r["lesion_sensitivity"])
               for m, r in report.by_modality.items()})
    return report


def plot_froc(curves: dict[str, list[dict]], path: Path,
              operating: dict[str, tuple[float, float]] | None = None) -> None:
    """The curves, each model's operating point (FP per scan, sensitivity) on its own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4.5))
    for modality, points in sorted(curves.items()):
        line, = axis.step([p["fp_per_scan"] for p in points],
                          [p["sensitivity"] for p in points], where="post", label=modality)
        if operating and modality in operating:
            axis.plot(*operating[modality], "o", color=line.get_color(),
                      label=f"{modality} operating point")
    axis.axvline(0.5, color="grey", linestyle=":", label="0.5 FP/scan")
    axis.set_xscale("symlog", linthresh=0.1)
    axis.set_xlim(left=0)
    axis.set_xlabel("false positives per scan")
    axis.set_ylabel("lesion sensitivity")
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title("FROC")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
