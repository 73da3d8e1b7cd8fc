"""`python -m models.card ZOO/MODALITY --command "..."`: write the model card, card.md.

Everything on the card is read from the files beside it (checkpoint, calibration,
held-out evaluation, parity reports, training history) or measured when the card is
written (ONNX Runtime per-slice latency on this machine), so a card cannot drift from
the model it describes. The training command is the one thing the files do not record.
Like `make bench`, it runs from a checkout: it times with the benchmarks' own code.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge.inference.spec import ModelSpec, Thresholds
from models.checkpoint import Checkpoint, load_checkpoint
from models.network import count_parameters, gflops_per_slice

# issue 3's acceptance targets on the held-out set
TARGETS = {"lesion_sensitivity": (">=", 0.85), "lesion_sensitivity_10mm_or_more": (">=", 0.95),
           "false_positives_per_scan": ("<=", 0.5), "series_specificity": (">=", 0.9)}
LABELS = {"lesion_sensitivity": "lesion sensitivity, all lesions",
          "lesion_sensitivity_10mm_or_more": "lesion sensitivity, lesions >= 10 mm",
          "false_positives_per_scan": "false positives per scan",
          "series_specificity": "series-level specificity",
          "series_sensitivity": "series-level sensitivity", "series_auc": "series-level AUC",
          "dice": "Dice (voxels, all series)"}


LATENCY_ROUNDS, LATENCY_PAUSE_S = 6, 2.0


def slice_latency_ms(onnx_path: Path, rounds: int, pause_s: float,
                     threads: int = 2) -> tuple[float, float, float]:
    """ONNX Runtime CPU time for one network input (batch 1), after warm-up, timed as the
    backends benchmark times it, in `rounds` rounds `pause_s` apart: (the median of the
    rounds' medians, the lowest, the highest). On shared cores a whole round can run at
    half speed (one CT model read 18 ms and 30 ms a few seconds apart), so one round
    alone can mislead."""
    from benchmarks.backends import measure
    from edge.backends.onnxruntime import OnnxRuntimeBackend

    medians = []
    with OnnxRuntimeBackend(onnx_path, ["CPUExecutionProvider"], threads=threads) as backend:
        spec = backend.spec
        batch = np.random.default_rng(0).uniform(
            0, 1, (1, spec.channels, spec.size, spec.size)).astype(np.float32)
        for i in range(rounds):
            if i:
                time.sleep(pause_s)
            medians.append(measure(backend.infer, batch, warmup=5, iterations=30)["p50_ms"])
    return float(np.median(medians)), min(medians), max(medians)


def _met(key: str, value: float) -> str:
    op, target = TARGETS[key]
    ok = value >= target if op == ">=" else value <= target
    return f"{op} {target:g}: {'met' if ok else '**missed**'}"


def _parity_line(path: Path) -> str:
    if not path.exists():
        return f"- {path.name}: not run"
    r = json.loads(path.read_text())
    scores = ", ".join(format(lesion["score"], ".3f") for lesion in r.get("lost_lesions", [])[:5])
    return (f"- `{path.name}`: {'passed' if r['passed'] else '**FAILED**'} on {r['series']} "
            f"held-out series; largest probability difference {r['max_abs_error']:.2g}; "
            f"{r['reference_lesions_found']} of {r['reference_lesions']} reference lesions "
            f"found; Dice {r['dice_reference']:.4f} -> {r['dice_candidate']:.4f}"
            + (f"; lost lesions scored {scores} against the threshold "
               f"{r['detection_threshold']:g}" if scores else ""))


def card(folder: Path, command: str, heldout_seeds: Sequence[int], remarks: str = "") -> str:
    checkpoint = load_checkpoint(folder / "model.pt")
    modality = checkpoint.spec.modality
    evaluation = json.loads((folder / "eval" / "eval.json").read_text())[modality]
    return f"""# scanside {modality} model

**Trained and evaluated on synthetic studies only. Not for clinical use.** Its figures
say how well it finds the lesions `scanside synth` draws, not tumours in patients.

{_what_it_is(folder, checkpoint)}
{_how_it_was_made(folder, checkpoint, command)}
{_how_well_it_does(evaluation, checkpoint.spec.thresholds, heldout_seeds)}
## Conversion parity

{_parity_line(folder / 'onnx-parity.json')}
{_parity_line(folder / 'fp16-parity.json')}
""" + (f"\n## Known weaknesses\n\n{remarks.strip()}\n" if remarks.strip() else "")


def _what_it_is(folder: Path, checkpoint: Checkpoint) -> str:
    """The network, its input, its operating point as calibration chose it, its files and
    its cost a slice, timed now on this machine."""
    from benchmarks.common import machine

    spec, network = checkpoint.spec, checkpoint.network
    report = json.loads((folder / "calibration.json").read_text())
    calibration, folds = report["chosen"], report.get("classifier_folds")
    chosen = (f"{calibration['lesion_sensitivity']:.3f} "
              f"({calibration['lesion_sensitivity_10mm_or_more']:.3f} for lesions >= 10 mm) "
              f"at {calibration['false_positives_per_scan']:.2f}")
    counted = calibration.get("negative_series")        # recorded since commit 0ae650e
    negatives = (f" ({round(calibration['series_specificity'] * counted)} of {counted} "
                 "series without a lesion called negative)" if counted else "")
    cpu = machine()["cpu"]
    inputs = ("one slice (two network inputs: the slice and its mirror)" if spec.mirror
              else "one network input")
    latency, fastest, slowest = slice_latency_ms(folder / "model.onnx", rounds=LATENCY_ROUNDS,
                                                 pause_s=LATENCY_PAUSE_S)
    cost = textwrap.fill(
        f"- Per-slice cost: {latency:.1f} ms median for {inputs}, ONNX Runtime FP32 "
        f"on 2 threads of {cpu}, measured when this card was written ({LATENCY_ROUNDS} rounds "
        f"{LATENCY_PAUSE_S:g} s apart; their medians ran from {fastest:.1f} to {slowest:.1f} "
        "ms). Whole-slice figures (reading and preprocessing included) are in BENCHMARKS.md.",
        90, subsequent_indent="  ")
    sizes = {name: (folder / name).stat().st_size / 2**20
             for name in ("model.pt", "model.onnx", "model.fp16.onnx")
             if (folder / name).exists()}
    thresholds = spec.thresholds
    crossed = (f" (each series scored by the classifier\n  fitted on the other {folds - 1} "
               f"of {folds} folds of it)" if thresholds.lesion_score == "classifier" and folds
               else "")
    companion = ("" if thresholds.companion_probability is None else
                 f"; in a series where one does, every other lesion from\n  "
                 f"{thresholds.companion_probability} is reported too (the series is called "
                 "positive by the first threshold alone)")
    return f"""## What it is

- 2D residual U-Net with attention gates on the skips and a slice-level tumour head
  (`models/network.py`): base {network.base_channels} channels, depth {network.depth},
  at most {network.max_channels} channels; {count_parameters(checkpoint.build()):,} parameters;
  {gflops_per_slice(network, spec.size):.2f} GFLOP per network input.
- Input: {spec.channels} x {spec.size} x {spec.size}, each slice resampled to {spec.spacing_mm} mm
  pixels{_context(spec)};
  intensity {_intensity(spec)}
- Thresholds, chosen by `scanside calibrate` on a calibration set used for nothing else:
  a lesion is reported when {_scoring(spec)} reaches
  {thresholds.detection_probability}
  (pixels above {thresholds.lesion_probability} form it) and its volume is at least
  {thresholds.min_volume_mm3:g} mm3{companion}.
  On the calibration set{crossed} they gave lesion sensitivity
  {chosen} false positives per scan and series specificity
  {calibration['series_specificity']:.3f}{negatives}.
- Files: {', '.join(f'`{n}` {s:.1f} MiB' for n, s in sizes.items())}.
{cost}
"""


def _context(spec: ModelSpec) -> str:
    k = spec.context_slices
    return (f" and seen with {k} neighbouring slice{'s' if k > 1 else ''} on each side "
            "(2.5D)" if k else "")


def _intensity(spec: ModelSpec) -> str:
    """The intensity line's end: kind, clip, scale, windows, weighting channel, mirror."""
    intensity = spec.intensity
    details = f", windows {list(intensity.windows)}" if intensity.windows else ""
    if intensity.weighting:
        details += (";\n  a second channel says T1 (-1), T2 (+1) or neither (0) from the echo "
                    "and repetition times")
    mirror = ("\n- Each slice is inferred as it is and mirrored left to right, the mirror's maps "
              "mirrored\n  back and the two averaged (`scanside calibrate --mirror`)."
              if spec.mirror else "")
    return (f"`{intensity.kind}` (clip {intensity.clip}, scale {intensity.scale}{details})."
            f"{mirror}")


def _scoring(spec: ModelSpec) -> str:
    """How a lesion's probability is scored, in words."""
    thresholds = spec.thresholds
    pixels = thresholds.lesion_score            # "peak", "mean" or "classifier"
    if pixels == "classifier":
        features = spec.lesion_classifier.features
        depth = "depth against width, " if "log_depth_ratio" in features else ""
        persists = (",\n  and whether that contrast goes on past its end slices"
                    if "persistence" in features else "")
        return ("its probability (the lesion classifier's,\n  a logistic regression "
                f"over {len(features)} measures of the candidate: "
                f"pixel probabilities, size,\n  {depth}slice head and image contrast"
                f"{persists})")
    if thresholds.slice_head:
        return (f"its probability (the lower of its {pixels} pixel\n  probability and the "
                "slice head's over its slices)")
    return f"its {pixels} pixel probability"


def _how_it_was_made(folder: Path, checkpoint: Checkpoint, command: str) -> str:
    """The training command, the data and, for a fine-tune or an average, where its
    weights came from; the epochs from history.json, which covers the whole run (the
    checkpoint's own history stops at its epoch)."""
    data = checkpoint.spec.training_data
    history_file = folder / "history.json"
    history = (json.loads(history_file.read_text()) if history_file.exists()
               else checkpoint.history)
    best = max(history, key=lambda h: h.get("val_dice", 0.0))
    fine_tuned = (f"\n- Fine-tuned: every weight started from `{data['fine_tuned_from']}`; the "
                  "epochs and curves below are the fine-tuning's." if "fine_tuned_from" in data
                  else "")
    if "averaged" in data:
        first, second = data["averaged"]["models"]
        share = data["averaged"]["weight"]
        fine_tuned += (f"\n- Averaged (`scanside average`): {1 - share:g} x `{first}` + "
                       f"{share:g} x `{second}`, weight by weight; the data and seed here "
                       "are the first model's.")
    return f"""## How it was made

```sh
{command}
```

- Training data: {data.get('cases', '?')} synthetic series, {data.get('validation_cases', '?')}
  of them held back for validation (split by patient); training seed
  {data.get('seed', '?')}; data digest `{str(data.get('digest', ''))[:16]}`.{fine_tuned}
- {len(history)} epochs; the checkpoint kept is the one with the best validation Dice,
  {best['val_dice']:.4f} at epoch {best['epoch']}. Curves: `training.png`.
"""


def _how_well_it_does(evaluation: dict, thresholds: Thresholds,
                      heldout_seeds: Sequence[int]) -> str:
    """The held-out figures against the targets, the FROC, and the breakdowns the
    evaluation recorded (conspicuity, kind, organ, polarity, weighting, contrast, set)."""
    figures = "\n".join(
        f"| {LABELS[k]} | {evaluation[k]:.3f} | {_met(k, evaluation[k]) if k in TARGETS else ''} |"
        for k in LABELS)
    on_froc = ("one point of it" if thresholds.companion_probability is None else
               "beside it, not on it: the curve applies one threshold to every series, the "
               "point a second one in series already called positive")
    found = "".join(_found_line(evaluation, key) for key in ("kind", "organ", "polarity"))
    return f"""## How well it does

On {evaluation['series']} held-out synthetic series ({evaluation['positive_series']} with
lesions; {evaluation['lesions']} lesions, {evaluation['lesions_10mm_or_more']} of them
>= 10 mm) generated with {_seeds(heldout_seeds)}, which no training or calibration set used.
A hit is a finding whose centre lies within max(5 mm, 0.75 x diameter) of the lesion's.

| figure | value | target (issue 3) |
|---|---|---|
{figures}

FROC (`eval/froc.png`) over every candidate lesion, whatever its probability (the
operating point above is {on_froc}), lesion sensitivity at a false-positive rate per
scan: {', '.join(f'{v:.3f} at {k}' for k, v in evaluation['froc'].items())}.
Failed series: {len(evaluation['failed_series'])}. Missed lesions: {len(evaluation['missed'])}, each
listed in `eval/eval.json` with its size, shape, organ and conspicuity.{_false_line(evaluation)}
{_conspicuity_line(evaluation)}{found}{_groups(evaluation)}"""


def _groups(evaluation: dict) -> str:
    """Figures by MR weighting and by contrast agent where recorded, and per held-out set
    when sets were pooled."""
    groups = "".join(
        f"\n{heading}\n" + "".join(
            f"\n- {w}: {g['series']} series, {g['lesions']} lesions; sensitivity "
            f"{g['lesion_sensitivity']:.3f} ({g['lesion_sensitivity_10mm_or_more']:.3f} "
            f">= 10 mm) at {g['false_positives_per_scan']:.2f} false positives per scan; "
            f"FROC {g['froc']['0.5']:.3f} at 0.5, {g['froc']['2']:.3f} at 2"
            for w, g in evaluation[key].items()) + "\n"
        for key, heading in (("by_mr_weighting", "By weighting, as each series' tags give it:"),
                             ("by_contrast", "By contrast agent, as each series' tags record "
                                             "it (ContrastBolusAgent):"))
        if key in evaluation)
    by_set = "".join(
        f"\n- `{source}`: {g['series']} series, {g['lesions']} lesions "
        f"({g['lesions_10mm_or_more']} >= 10 mm); sensitivity {g['lesion_sensitivity']:.3f} "
        f"({g['lesion_sensitivity_10mm_or_more']:.3f} >= 10 mm) at "
        f"{g['false_positives_per_scan']:.3f} false positives per scan; specificity "
        f"{g['series_specificity']:.3f} over {g['series'] - g['positive_series']} series "
        "without a lesion"
        for source, g in evaluation.get("by_source", {}).items())
    if by_set:
        groups += "\nEach held-out set on its own:\n" + by_set + "\n"
    return groups


def _seeds(seeds: Sequence[int]) -> str:
    *first, last = seeds
    return f"seeds {', '.join(map(str, first))} and {last}" if first else f"seed {last}"


def _conspicuity_line(evaluation: dict) -> str:
    """Sensitivity per band of conspicuity (how far a lesion stands out in the network
    input, `models.evaluate.conspicuity`), where the evaluation measured it."""
    bands = evaluation.get("by_conspicuity")
    if not bands or not any(band["lesions"] for band in bands.values()):
        return ""
    parts = ", ".join(f"{band['sensitivity']:.3f} of {band['lesions']} lesions {name}"
                      for name, band in bands.items() if band["lesions"])
    return "\n" + textwrap.fill(
        "By conspicuity (the lesion's mean network input against a shell 4-12 mm outside it, "
        f"in standard deviations of the shell), sensitivity: {parts}.", 90) + "\n"


def _false_line(evaluation: dict) -> str:
    """How many false positives eval.json lists; nothing for an evaluation written before
    it listed them."""
    false = evaluation.get("false_positives")
    if false is None:
        return ""
    clear = sum(not f["series_has_lesions"] for f in false)
    return (f"\nFalse positives: {len(false)} ({clear} in series without a lesion), each "
            "listed there with its centre, size, probability and slices.")


def _found_line(evaluation: dict, key: str) -> str:
    """Lesions found per kind or organ, where the truth names them (synthetic sets do), or
    per polarity (brighter or darker than the surroundings in the network input)."""
    groups = evaluation.get(f"by_{key}")
    if not groups:
        return ""
    parts = ", ".join(f"{k['found']} of {k['lesions']} {name} ({k['found_10mm_or_more']} of "
                      f"{k['lesions_10mm_or_more']})" for name, k in groups.items())
    return "\n" + textwrap.fill(
        f"By {key}, lesions found (>= 10 mm in brackets): {parts}.", 90) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.card", description=__doc__)
    parser.add_argument("folder", type=Path, help="a zoo entry, e.g. models/zoo/CT")
    parser.add_argument("--command", required=True, help="the training command")
    parser.add_argument("--heldout-seed", type=int, nargs="+", required=True,
                        help="the `scanside synth` seed(s) of the held-out evaluation set, "
                             "all of whose series the evaluation pooled")
    parser.add_argument("--remarks", default="",
                        help="what the figures do not say: why a target is missed, say")
    args = parser.parse_args(argv)
    (args.folder / "card.md").write_text(card(args.folder, args.command, args.heldout_seed,
                                              args.remarks))
    print(f"written: {args.folder / 'card.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
