"""`scanside train`: fit a detection network to cases on disk.

Loss: soft Dice + binary cross-entropy on the lesion map, plus cross-entropy on the
slice-level tumour head. Both Dice and plain cross-entropy count voxels, so on a slice a
30 mm lesion outweighs a 5 mm one 36-fold; with `balance_lesions_mm2` the cross-entropy
weighs each lesion on a slice smaller than that area as if it had it (`lesion_weights`).
Transfer learning: `init_encoder` copies another model's encoder (CT into PET, say);
`init_weights` starts from every weight of a model of the same modality, to fine-tune it
on more data (`transfer.py`). Sampling oversamples slices with lesions and crops around
them, each lesion in proportion to its volume or, with `sample_by_lesion`, each as often
(and with `favour_faint_sd` faint ones more often, as `Sampler` says). With
`hard_negative_fraction`, that share of crops is centred on spots where the network itself
marks a lesion that is not there, found again at the start of every epoch by running it
over every training slice (`validation.review`; on CPU about as long as the validation of
that many cases), so that it learns what its false candidates look like; with
`favour_missed`, the lesions it misses in that pass are drawn that many times as often
(its hard positives, as the false spots are its hard negatives). Every batch is augmented
(`augment.py`). The validation split is by patient and depends on the case names only, so
a fine-tuning never validates on its starting point's training cases (`split_by_patient`).
Each epoch ends with validation, `last.pt` (for --resume) and, when validation Dice
improves, `model.pt` (the slim inference checkpoint). Runs on CPU or CUDA; under
`torchrun` it trains data-parallel with DistributedDataParallel (gloo on CPU, NCCL on
GPUs).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from torch import distributed as dist
from torch.nn import functional as F
from tqdm import tqdm

from edge.errors import ModelError
from edge.inference.spec import Intensity, ModelSpec
from models.augment import AugmentConfig, augment
from models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from models.data import (
    SHELL_MM,
    CaseData,
    Sampler,
    digest,
    find_cases,
    load_all,
    split_by_patient,
)
from models.network import DetectionNet, NetworkConfig
from models.transfer import (
    STEM_WEIGHTS,
    StemLayout,
    fit_stem,
    set_encoder_trainable,
    transfer_encoder,
)
from models.validation import (
    FALSE_SPOT_MARGIN_MM,
    count_slices,
    review,
    validate,
    whole_case_inference,
)

DEFAULT_SPECS = {
    "CT": ModelSpec("CT", 256, 1.6, Intensity("ct_windows", ((-160.0, 240.0), (-1000.0, 1000.0))),
                    name="scanside-ct"),
    "MR": ModelSpec("MR", 256, 1.6, Intensity("mr_zscore", clip=5.0), name="scanside-mr"),
    "PT": ModelSpec("PT", 128, 4.0, Intensity("pet_suv", clip=4.0, scale=5.0), name="scanside-pt"),
}
DEFAULT_CROP = {"CT": 160, "MR": 160, "PT": 96}


@dataclass(frozen=True)
class TrainConfig:
    modality: str
    data: tuple[Path, ...]
    out: Path
    network: NetworkConfig = NetworkConfig(base_channels=8, depth=5, max_channels=128)
    spec: ModelSpec | None = None
    epochs: int = 30
    steps_per_epoch: int = 100
    batch_size: int = 16
    crop: int | None = None
    input_size: int | None = None        # network input, pixels a side (default per modality,
    pixel_mm: float | None = None        # ... or the fine-tuned model's); its pixel spacing
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    positive_fraction: float = 0.5
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "cpu"
    workers: int = 2
    init_encoder: Path | None = None
    init_weights: Path | None = None     # fine-tuning: every weight, and the network size
    freeze_encoder_epochs: int = 0
    resume: bool = False
    tumour_labels: tuple[int, ...] | None = None
    augment: AugmentConfig = AugmentConfig()
    balance_lesions_mm2: float = 0.0     # 0: every lesion voxel weighs the same
    sample_by_lesion: bool = False       # positive crops: each lesion as often (`Sampler`)
    favour_faint_sd: float = 0.0         # ... and faint ones (contrast under this) more often
    hard_negative_fraction: float = 0.0  # crops on the network's own false spots (`Sampler`)
    favour_missed: float = 0.0           # lesions it misses, this many times as often (0: off)
    mr_weighting: bool = False           # MR: a second input channel says T1 or T2
    context_slices: int | None = None    # 2.5D: neighbours each side (default: the fine-tuned
                                         # model's, else 0)


def train(config: TrainConfig) -> Path | None:
    """Train, checkpointing every epoch; returns the path of the best model (None in the
    other processes of a distributed run)."""
    _check(config)
    rank, world, device = _distributed(config.device)
    torch.manual_seed(config.seed + rank)
    generator = torch.Generator().manual_seed(config.seed + rank)
    rng = np.random.default_rng(config.seed + rank)
    last = config.out / "last.pt"
    resumed = load_checkpoint(last, str(device)) if config.resume and last.exists() else None
    start_from = (load_checkpoint(config.init_weights)
                  if resumed is None and config.init_weights else None)
    spec = _input_spec(config, resumed, start_from)
    cases = find_cases(config.data, config.modality, config.tumour_labels)
    train_cases, val_cases = split_by_patient(cases, config.val_fraction)
    fine_tuned_from = (resumed.spec.training_data.get("fine_tuned_from") if resumed
                       else str(config.init_weights) if start_from else None)
    spec = replace(spec, training_data={
        "digest": digest(cases), "cases": len(cases), "validation_cases": len(val_cases),
        "sources": [str(p) for p in config.data], "seed": config.seed,
        **({"fine_tuned_from": fine_tuned_from} if fine_tuned_from else {})})
    workers = config.workers if rank == 0 else 1
    train_data = load_all(train_cases, spec, workers)
    val_data = load_all(val_cases, spec, workers) if rank == 0 else []
    net = _network(config, spec, resumed, start_from, device, rank)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    start, history = 0, []
    if resumed is not None:
        start, history = _resume(resumed, net, optimizer, generator, rng)
        _say(rank, f"resumed from {last} after epoch {start}")
    run = _Run(config, spec, net,
               torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net,
               optimizer, _sampler(config, spec, train_data, rng), generator, rng, device,
               rank, train_data, val_data, history)
    for epoch in range(start, config.epochs):
        frozen = epoch < config.freeze_encoder_epochs
        mined = run.mine(epoch)
        losses = run.learn(epoch, frozen)
        if rank == 0:
            run.close(epoch, losses, frozen, mined)
        if world > 1:
            dist.barrier()
    if rank == 0:
        (config.out / "spec.json").write_text(spec.to_json() + "\n")
        (config.out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_history(history, config.out / "training.png")
    if world > 1:
        dist.destroy_process_group()
    return config.out / "model.pt" if rank == 0 else None


def _check(config: TrainConfig) -> None:
    shares = (config.positive_fraction, config.hard_negative_fraction)
    if min(shares) < 0 or sum(shares) > 1:
        raise ModelError(f"positive fraction {config.positive_fraction} and hard-negative "
                         f"fraction {config.hard_negative_fraction}: expected shares of the "
                         f"crops, each at least 0 and together at most 1")
    if config.favour_missed and config.favour_missed < 1:
        raise ModelError(f"favouring missed lesions {config.favour_missed} times: expected "
                         "0 (off) or a weight of at least 1")


def _input_spec(config: TrainConfig, resumed: Checkpoint | None,
                start_from: Checkpoint | None) -> ModelSpec:
    """What the network will see: a resumed run's own input; else the modality's default
    (or `config.spec`), taking a fine-tuned model's grid and intensity, then the grid,
    weighting channel and neighbouring slices that `config` asks for."""
    if resumed is not None:         # goes on with the input and network it began with
        return resumed.spec
    spec = config.spec or DEFAULT_SPECS[config.modality]
    if config.mr_weighting:
        spec = replace(spec, intensity=replace(spec.intensity, weighting=True))
        spec.validate(f"{config.modality} training")
    if start_from is not None:
        if start_from.spec.modality != config.modality:
            raise ModelError(f"{config.init_weights}: a {start_from.spec.modality} model; "
                             f"fine-tuning for {config.modality} needs a {config.modality} one")
        spec = replace(spec, size=start_from.spec.size, spacing_mm=start_from.spec.spacing_mm,
                       intensity=replace(start_from.spec.intensity,   # the input it learned on,
                                         weighting=start_from.spec.intensity.weighting
                                         or spec.intensity.weighting))  # perhaps widened
    if config.context_slices is not None:    # 2D to 2.5D, or back
        spec = replace(spec, context_slices=config.context_slices)
        spec.validate(f"{config.modality} training")
    if config.input_size or config.pixel_mm:    # another input grid
        spec = replace(spec, size=config.input_size or spec.size,
                       spacing_mm=config.pixel_mm or spec.spacing_mm)
        spec.validate(f"{config.modality} training")
    return spec


def _network(config: TrainConfig, spec: ModelSpec, resumed: Checkpoint | None,
             start_from: Checkpoint | None, device: torch.device, rank: int) -> DetectionNet:
    """The network to train, on `device`: a resumed run's size (its weights come with the
    optimizer, in `_resume`), or a fine-tuned model's size and every weight, its stem fitted
    to `spec`'s input, or `config.network`; then another model's encoder if asked."""
    network = (resumed.network if resumed else
               replace(start_from.network if start_from else config.network,
                       in_channels=spec.channels))
    net = DetectionNet(network).to(device)
    if start_from is not None:
        layouts = StemLayout.of(start_from.spec), StemLayout.of(spec)
        net.load_state_dict({name: fit_stem(tensor, *layouts) if name in STEM_WEIGHTS
                             else tensor for name, tensor in start_from.state.items()})
        _say(rank, f"every weight initialised from {config.init_weights} "
                   f"(epoch {start_from.epoch} of its training)")
    if config.init_encoder and resumed is None:
        source = load_checkpoint(config.init_encoder)
        copied = transfer_encoder(net, source.build(), StemLayout.of(spec),
                                  StemLayout.of(source.spec))
        _say(rank, f"encoder initialised from {config.init_encoder}: {len(copied)} tensors")
    return net


def _sampler(config: TrainConfig, spec: ModelSpec, train_data: list[CaseData],
             rng: np.random.Generator) -> Sampler:
    return Sampler(train_data, config.crop or DEFAULT_CROP[config.modality],
                   config.positive_fraction, rng, by_lesion=config.sample_by_lesion,
                   faint_sd=config.favour_faint_sd,
                   shell_px=tuple(round(mm / spec.spacing_mm) for mm in SHELL_MM),
                   hard_negative_fraction=config.hard_negative_fraction,
                   favour_missed=config.favour_missed)


@dataclass
class _Run:
    """A training run's moving parts, set up by `train`; each method is one phase of an
    epoch: `mine` the network's false spots and missed lesions, `learn` for the epoch's
    steps, `close` it with validation and checkpoints (on rank 0)."""

    config: TrainConfig
    spec: ModelSpec
    net: DetectionNet
    model: torch.nn.Module              # `net`, or `net` wrapped for data-parallel training
    optimizer: torch.optim.Optimizer
    sampler: Sampler
    generator: torch.Generator
    rng: np.random.Generator
    device: torch.device
    rank: int
    train_data: list[CaseData]
    val_data: list[CaseData]
    history: list[dict]

    def mine(self, epoch: int) -> dict:
        """Run the network over every training slice and point the sampler at its false
        spots and at the lesions it misses, as `config` asks; the counts, for the history."""
        config, mined = self.config, {}
        if not (config.hard_negative_fraction or config.favour_missed):
            return mined
        run = whole_case_inference(self.net, self.spec, self.device, count_slices(self.train_data))
        spots, peaks = review(run, self.train_data,
                              round(FALSE_SPOT_MARGIN_MM / self.spec.spacing_mm),
                              self.sampler.lesions if config.favour_missed else (),
                              progress=self.rank == 0)
        if config.hard_negative_fraction:
            self.sampler.false_spots, mined["false_spots"] = spots, len(spots)
            _say(self.rank, f"epoch {epoch + 1}: {len(spots)} false spots in "
                            f"{len(self.train_data)} training cases")
        if config.favour_missed:
            mined["missed_lesions"] = self.sampler.set_missed(peaks)
            _say(self.rank, f"epoch {epoch + 1}: it misses {mined['missed_lesions']} of "
                            f"{len(peaks)} training lesions")
        return mined

    def learn(self, epoch: int, frozen: bool) -> list[float]:
        """One epoch of optimiser steps on augmented crops; the loss of each step."""
        config, spec, device = self.config, self.spec, self.device
        self.net.train()
        set_encoder_trainable(self.net, not frozen)
        total, losses = config.epochs * config.steps_per_epoch, []
        bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="step", disable=self.rank != 0)
        for step in bar:
            for group in self.optimizer.param_groups:
                group["lr"] = _learning_rate(config, epoch * config.steps_per_epoch + step, total)
            images, masks, tumour = (torch.from_numpy(a)
                                     for a in self.sampler.batch(config.batch_size))
            images, masks = augment(images, masks, config.augment, self.generator,
                                    spec.intensity.image_channels, spec.slices)
            tumour = masks.flatten(1).amax(dim=1, keepdim=True)   # what survived the warp
            weights = (lesion_weights(masks, config.balance_lesions_mm2 / spec.spacing_mm**2)
                       .to(device) if config.balance_lesions_mm2 else None)
            lesion_logits, tumour_logits = self.model(images.to(device))
            loss = detection_loss(lesion_logits, tumour_logits, masks.to(device),
                                  tumour.to(device), weights)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        return losses

    def close(self, epoch: int, losses: list[float], frozen: bool, mined: dict) -> None:
        """Validate, note the epoch in the history, write `last.pt` and, when validation
        Dice improved, `model.pt`."""
        config = self.config
        metrics = validate(whole_case_inference(self.net, self.spec, self.device,
                                                count_slices(self.val_data)), self.val_data)
        improved = metrics["val_dice"] > max((h["val_dice"] for h in self.history),
                                             default=-1.0)
        self.history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                             "encoder_frozen": frozen, **mined, **metrics})
        checkpoint = Checkpoint(self.net.config, self.spec, self.net.state_dict(), epoch + 1,
                                self.optimizer.state_dict(), self.history,
                                {"torch": self.generator.get_state(),
                                 "numpy": self.rng.bit_generator.state})
        save_checkpoint(config.out / "last.pt", checkpoint)
        if improved:
            save_checkpoint(config.out / "model.pt", checkpoint, slim=True)
        _say(self.rank, f"epoch {epoch + 1}: loss {self.history[-1]['train_loss']:.4f}, "
                        f"validation Dice {metrics['val_dice']:.4f}, slice AUC "
                        f"{metrics['val_slice_auc']}" + (" (best)" if improved else ""))


def detection_loss(lesion_logits: torch.Tensor, tumour_logits: torch.Tensor,
                   masks: torch.Tensor, tumour: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice + BCE on lesion pixels (weighted per pixel by `weights` when given), BCE
    on the slice-level tumour head."""
    probability = torch.sigmoid(lesion_logits)
    intersection = (probability * masks).sum()
    dice = 1 - (2 * intersection + 1) / (probability.sum() + masks.sum() + 1)
    bce = F.binary_cross_entropy_with_logits(lesion_logits, masks, weight=weights,
                                             pos_weight=torch.tensor(1.5, device=masks.device))
    head = F.binary_cross_entropy_with_logits(tumour_logits, tumour)
    return dice + bce + 0.3 * head


def lesion_weights(masks: torch.Tensor, balance_pixels: float,
                   most: float = 25.0) -> torch.Tensor:
    """Per-pixel cross-entropy weights for (N, 1, H, W) masks: 1, except that a lesion
    (a connected region of a mask) smaller than `balance_pixels` gets
    balance_pixels / its area on every pixel, at most `most`, so that small lesions count
    in the loss about as much as large ones. All ones when `balance_pixels` is 0."""
    weights = np.ones(masks.shape, np.float32)
    if balance_pixels > 0:
        for n, mask in enumerate(masks[:, 0].numpy() > 0.5):
            labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
            if count:
                areas = np.bincount(labels.ravel())
                scale = np.clip(balance_pixels / np.maximum(areas, 1), 1.0, most)
                scale[0] = 1.0
                weights[n, 0] = scale[labels]
    return torch.from_numpy(weights)



def _learning_rate(config: TrainConfig, step: int, total: int) -> float:
    warmup = min(100, total // 10)
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return config.learning_rate * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def _resume(checkpoint: Checkpoint, net, optimizer, generator, rng):
    net.load_state_dict(checkpoint.state)
    optimizer.load_state_dict(checkpoint.optimizer)
    generator.set_state(checkpoint.random_state["torch"])
    rng.bit_generator.state = checkpoint.random_state["numpy"]
    return checkpoint.epoch, checkpoint.history


def _distributed(device: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, torch.device(device)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return dist.get_rank(), world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return dist.get_rank(), world, torch.device("cpu")


def _say(rank: int, message: str) -> None:
    if rank == 0:
        tqdm.write(message)


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, left = plt.subplots(figsize=(7, 4))
    left.plot(epochs, [h["train_loss"] for h in history], "b-", label="training loss")
    left.set_xlabel("epoch")
    left.set_ylabel("training loss", color="b")
    right = left.twinx()
    right.plot(epochs, [h["val_dice"] for h in history], "r-", label="validation Dice")
    right.set_ylabel("validation Dice", color="r")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
