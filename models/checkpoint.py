"""Checkpoints: the network's configuration, its preprocessing spec and its weights.

Saved as plain data (tensors, numbers, strings), so `torch.load(weights_only=True)` reads
them without unpickling code. A training checkpoint also carries the optimiser, the
epoch, the history and the random states, for `scanside train --resume`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from edge.errors import ModelError
from edge.inference.spec import ModelSpec
from models.network import DetectionNet, NetworkConfig


@dataclass
class Checkpoint:
    network: NetworkConfig
    spec: ModelSpec
    state: dict
    epoch: int = 0
    optimizer: dict | None = None
    history: list = field(default_factory=list)
    random_state: dict | None = None

    def build(self) -> DetectionNet:
        net = DetectionNet(self.network)
        net.load_state_dict(self.state)
        return net


def save_checkpoint(path: Path, checkpoint: Checkpoint, slim: bool = False) -> Path:
    """Write atomically (temp file, then rename). `slim` keeps only what inference needs."""
    data = {"format": "scanside-checkpoint-1", "network": checkpoint.network.to_dict(),
            "spec": checkpoint.spec.to_json(), "state": checkpoint.state,
            "epoch": checkpoint.epoch, "history": checkpoint.history}
    if not slim:
        data |= {"optimizer": checkpoint.optimizer, "random_state": checkpoint.random_state}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save(data, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: Path, device: str = "cpu") -> Checkpoint:
    """Read a checkpoint; ModelError names the file and what is wrong with it."""
    try:
        data = torch.load(path, map_location=device, weights_only=True)
    except (OSError, RuntimeError, ValueError) as error:
        raise ModelError(f"{path}: cannot be read as a scanside checkpoint: {error}") from error
    if not isinstance(data, dict) or data.get("format") != "scanside-checkpoint-1":
        raise ModelError(f"{path}: not a scanside checkpoint (no 'scanside-checkpoint-1' format)")
    return Checkpoint(NetworkConfig(**data["network"]),
                      ModelSpec.from_json(data["spec"], str(path)), data["state"],
                      data.get("epoch", 0), data.get("optimizer"), data.get("history", []),
                      data.get("random_state"))


def average_checkpoints(first: Path, second: Path, weight: float = 0.5,
                        across_grids: bool = False) -> Checkpoint:
    """(1 - weight) x `first` + weight x `second`, weight by weight, BatchNorm statistics
    included: weight-space ensembling of a fine-tune with the model it started from (or of
    two fine-tunes of one model), one network's cost at inference. Models trained apart
    do not average into a working one. The spec is `first`'s (recalibrate the result);
    ModelError when the two differ in network or input: modality, intensity and, unless
    `across_grids` (the network is fully convolutional, so a fine-tune moved to a new
    grid still averages with the model it started from), input size and pixel spacing."""
    if not 0.0 <= weight <= 1.0:
        raise ModelError(f"averaging weight {weight}: expected a number from 0 to 1")
    a, b = load_checkpoint(first), load_checkpoint(second)
    if a.network != b.network:
        raise ModelError(f"{second}: network {b.network} differs from {first}'s {a.network}")
    grid = () if across_grids else ("size", "spacing_mm")
    for field_name in ("modality", *grid, "intensity"):
        if getattr(a.spec, field_name) != getattr(b.spec, field_name):
            raise ModelError(f"{second}: spec {field_name} {getattr(b.spec, field_name)!r} "
                             f"differs from {first}'s {getattr(a.spec, field_name)!r}")
    state = {name: value * (1 - weight) + b.state[name] * weight if value.is_floating_point()
             else value for name, value in a.state.items()}
    averaged = {"models": [str(first), str(second)], "weight": weight}
    grids = [[s.size, s.spacing_mm] for s in (a.spec, b.spec)]
    if grids[0] != grids[1]:
        averaged["grids"] = grids
    spec = replace(a.spec, training_data={**a.spec.training_data, "averaged": averaged})
    return Checkpoint(a.network, spec, state)
