"""The model card is written from the files of a zoo entry, never by hand."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace

from models.calibrate import calibrate
from models.card import card
from models.checkpoint import load_checkpoint, save_checkpoint
from models.evaluate import evaluate, write_report
from models.torch_backend import TorchBackend


def test_the_card_states_the_measured_figures_and_which_targets_they_miss(tiny_zoo, pet_cases,
                                                                          tmp_path, monkeypatch):
    monkeypatch.setattr("models.card.LATENCY_PAUSE_S", 0.0)
    entry = tmp_path / "PT"
    shutil.copytree(tiny_zoo / "PT", entry)
    with TorchBackend(entry / "model.pt") as backend:
        calibrate(pet_cases, entry / "model.pt", entry / "model.pt", backend)
    (entry / "model.pt.calibration.json").rename(entry / "calibration.json")
    with TorchBackend(entry / "model.pt") as backend:
        cases = evaluate(pet_cases, backend)
    assert {c.source for c in cases} == {str(pet_cases[0].parent)}
    write_report({"PT": cases}, entry / "eval")
    figures = json.loads((entry / "eval" / "eval.json").read_text())["PT"]

    text = card(entry, "scanside train --data d --modality PT --out r", heldout_seeds=[77])

    assert "Not for clinical use" in text and "scanside train --data d" in text
    assert "generated with seed 77" in text
    fp = figures["false_positives_per_scan"]
    row = next(line for line in text.splitlines() if line.startswith("| false positives"))
    assert f"| {fp:.3f} |" in row and ("met" if fp <= 0.5 else "**missed**") in row
    assert "- onnx-parity.json: not run" in text
    chosen = json.loads((entry / "calibration.json").read_text())["chosen"]
    assert (f"{chosen['lesion_sensitivity_10mm_or_more']:.3f} for lesions >= 10 mm) at "
            f"{chosen['false_positives_per_scan']:.2f} false positives per scan and series "
            f"specificity {chosen['series_specificity']:.3f}") in " ".join(text.split())
    cost = re.search(r"Per-slice cost: ([\d.]+) ms median .* rounds\s+0 s\s+apart;\s+their"
                     r"\s+medians\s+ran\s+from\s+([\d.]+)\s+to\s+([\d.]+)\s+ms", text, re.S)
    assert cost and float(cost[2]) <= float(cost[1]) <= float(cost[3])
    assert "Fine-tuned" not in text and "By weighting" not in text
    bands = figures["by_conspicuity"]                    # every true lesion was measured
    assert sum(band["lesions"] for band in bands.values()) == figures["lesions"] > 0
    assert "By conspicuity" in text and "standard deviations of the shell" in text
    for key in ("kind", "organ", "polarity"):    # synthetic truth names the first two
        groups = figures[f"by_{key}"]
        assert sum(k["lesions"] for k in groups.values()) == figures["lesions"]
        name, k = next(iter(groups.items()))
        assert f"By {key}, lesions found" in text
        assert (f"{k['found']} of {k['lesions']} {name} ({k['found_10mm_or_more']} of "
                f"{k['lesions_10mm_or_more']})") in " ".join(text.split())
    false = figures["false_positives"]
    assert len(false) == round(fp * figures["series"])
    assert (f"False positives: {len(false)} ({sum(not f['series_has_lesions'] for f in false)} "
            "in series without a lesion)") in " ".join(text.split())
    scored = load_checkpoint(entry / "model.pt").spec.thresholds.lesion_score
    assert ("fitted on the other 4 of 5 folds" in text) == (scored == "classifier")

    evaluation = json.loads((entry / "eval" / "eval.json").read_text())   # as an MR set has
    evaluation["PT"]["by_mr_weighting"] = {"T1": {**figures, "lesion_sensitivity": 0.25}}
    evaluation["PT"]["by_contrast"] = {"none recorded": {**figures, "lesion_sensitivity": 0.5}}
    evaluation["PT"]["by_source"] = {"data/heldout-a": {**figures, "series_specificity": 0.75}}
    (entry / "eval" / "eval.json").write_text(json.dumps(evaluation))
    (entry / "fp16-parity.json").write_text(json.dumps({
        "passed": False, "series": 30, "max_abs_error": 0.02, "reference_lesions": 54,
        "reference_lesions_found": 53, "dice_reference": 0.8, "dice_candidate": 0.8,
        "detection_threshold": 0.1, "lost_lesions": [{"series": "PT-1", "score": 0.1043}]}))
    text = card(entry, "scanside train --data d --modality PT --out r", heldout_seeds=[77, 78])
    assert ("`fp16-parity.json`: **FAILED** on 30 held-out series; largest probability "
            "difference 0.02; 53 of 54 reference lesions found; Dice 0.8000 -> 0.8000; lost "
            "lesions scored 0.104 against the threshold 0.1") in " ".join(text.split())
    assert "generated with seeds 77 and 78, which no training" in " ".join(text.split())
    assert (f"- T1: {figures['series']} series, {figures['lesions']} lesions; "
            "sensitivity 0.250") in text
    assert (f"(ContrastBolusAgent):\n\n- none recorded: {figures['series']} series, "
            f"{figures['lesions']} lesions; sensitivity 0.500") in text
    assert (f"- `data/heldout-a`: {figures['series']} series, {figures['lesions']} lesions "
            f"({figures['lesions_10mm_or_more']} >= 10 mm)") in text
    assert "specificity 0.750 over" in " ".join(text.split())

    checkpoint = load_checkpoint(entry / "model.pt")    # the same model, as a fine-tuning
    checkpoint.spec = replace(checkpoint.spec, training_data={
        **checkpoint.spec.training_data, "fine_tuned_from": "models/zoo/PT/model.pt"})
    save_checkpoint(entry / "model.pt", checkpoint, slim=True)
    text = card(entry, "scanside train --init-weights models/zoo/PT/model.pt", heldout_seeds=[77])
    assert "- Fine-tuned: every weight started from `models/zoo/PT/model.pt`" in text

    checkpoint.spec = replace(checkpoint.spec, training_data={     # averaged with another
        **checkpoint.spec.training_data,
        "averaged": {"models": ["models/zoo/PT/model.pt", "runs/b/model.pt"], "weight": 0.25}})
    save_checkpoint(entry / "model.pt", checkpoint, slim=True)
    text = " ".join(card(entry, "scanside average a b --out c", heldout_seeds=[77]).split())
    assert ("- Averaged (`scanside average`): 0.75 x `models/zoo/PT/model.pt` + 0.25 x "
            "`runs/b/model.pt`, weight by weight;") in text
