"""models/zoo/build.sh (`make zoo`): the whole chain from synthesis to a model card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BUILD = Path(__file__).parents[2] / "models" / "zoo" / "build.sh"


def build(tmp_path: Path, **settings: str) -> subprocess.CompletedProcess:
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DATA": str(tmp_path / "data"), "RUNS": str(tmp_path / "runs"),
        "ZOO": str(tmp_path / "zoo"), "WORKERS": "2"} | settings
    return subprocess.run(["bash", str(BUILD), "PT"], env=env, capture_output=True, text=True,
                          timeout=280)


def test_a_set_drawn_by_another_version_of_the_synthesis_is_not_reused(tmp_path):
    train = tmp_path / "data" / "train-PT"
    train.mkdir(parents=True)
    command = f"scanside synth --modality PT --cases 60 --seed 1 --out {train}"
    (train / ".complete").write_text(command + "\n")    # stamped before synthesis digests
    result = build(tmp_path)
    assert result.returncode == 1
    assert f"{train} holds another set: {command}, not {command} (synthesis " in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_make_zoo_builds_a_model_its_exports_evaluation_and_card(tmp_path):
    settings = dict(EPOCHS="1", STEPS="2", TRAIN_CASES="3", CALIB_CASES="2", HELDOUT_CASES="2",
                    TRAIN_ARGS="--batch-size 4", REMARKS="a test build")
    result = build(tmp_path, **settings)
    assert result.returncode == 0, result.stderr[-3000:]
    entry = tmp_path / "zoo" / "PT"
    for name in ("model.pt", "model.onnx", "onnx-parity.json", "calibration.json",
                 "eval/eval.json", "card.md", "training.png"):
        assert (entry / name).exists(), name
    assert json.loads((entry / "onnx-parity.json").read_text())["passed"]
    card = (entry / "card.md").read_text()
    assert "scanside synth --modality PT --cases 3 --seed 1" in card and "a test build" in card
    stamp = (tmp_path / "data" / "heldout-PT" / ".complete").read_text()
    assert "--seed 1001" in stamp and "(synthesis " in stamp
