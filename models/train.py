"""`scanside train`: fit a detection network to cases on disk.

Loss: soft Dice + binary cross-entropy on the lesion map, plus cross-entropy on the
slice-level tumour head. Both Dice and plain cross-entropy count voxels, so on a slice a
30 mm lesion outweighs a 5 mm one 36-fold; with `balance_lesions_mm2` the cross-entropy
weighs each lesion on a slice smaller than that area as if it had it (`lesion_weights`).
Transfer learning: `init_encoder` copies another model's encoder (CT into PET, say);
`init_weights` starts from every weight of a model of the same modality, to fine-tune it
on more data. Sampling oversamples slices with lesions and crops around them, each
lesion in proportion to its volume or, with `sample_by_lesion`, each as often (and with
`favour_faint_sd` faint ones more often, as `Sampler` says). With
`hard_negative_fraction`, that share of crops is centred on spots where the network itself
marks a lesion that is not there, found again at the start of every epoch by running it
over every training slice (`review`; on CPU about as long as the validation of that
many cases), so that it learns what its false candidates look like; with `favour_missed`,
the lesions it misses in that pass are drawn that many times as often (its hard positives,
as the false spots are its hard negatives). Every
batch is augmented (`augment.py`). The validation split is by patient and depends on
the case names only, so a fine-tuning never validates on its starting point's training
cases (`split_by_patient`). Each epoch ends
with validation, `last.pt` (for --resume) and, when validation Dice improves,
`model.pt` (the slim inference checkpoint). Runs on CPU or CUDA; under `torchrun` it
trains data-parallel with DistributedDataParallel (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

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
    false_spot_peaks,
    find_cases,
    load_all,
    split_by_patient,
)
from models.network import DetectionNet, NetworkConfig, Probabilities

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
    shares = (config.positive_fraction, config.hard_negative_fraction)
    if min(shares) < 0 or sum(shares) > 1:
        raise ModelError(f"positive fraction {config.positive_fraction} and hard-negative "
                         f"fraction {config.hard_negative_fraction}: expected shares of the "
                         f"crops, each at least 0 and together at most 1")
    if config.favour_missed and config.favour_missed < 1:
        raise ModelError(f"favouring missed lesions {config.favour_missed} times: expected "
                         "0 (off) or a weight of at least 1")
    rank, world, device = _distributed(config.device)
    torch.manual_seed(config.seed + rank)
    generator = torch.Generator().manual_seed(config.seed + rank)
    rng = np.random.default_rng(config.seed + rank)
    last = config.out / "last.pt"
    resumed = load_checkpoint(last, str(device)) if config.resume and last.exists() else None
    spec = config.spec or DEFAULT_SPECS[config.modality]
    if config.mr_weighting:
        spec = replace(spec, intensity=replace(spec.intensity, weighting=True))
        spec.validate(f"{config.modality} training")
    start_from, fine_tuned_from = None, None
    if resumed is not None:         # goes on with the input and network it began with
        spec = resumed.spec
        fine_tuned_from = spec.training_data.get("fine_tuned_from")
    elif config.init_weights:
        start_from = load_checkpoint(config.init_weights)
        fine_tuned_from = str(config.init_weights)
        if start_from.spec.modality != config.modality:
            raise ModelError(f"{config.init_weights}: a {start_from.spec.modality} model; "
                             f"fine-tuning for {config.modality} needs a {config.modality} one")
        spec = replace(spec, size=start_from.spec.size, spacing_mm=start_from.spec.spacing_mm,
                       intensity=replace(start_from.spec.intensity,   # the input it learned on,
                                         weighting=start_from.spec.intensity.weighting
                                         or spec.intensity.weighting))  # perhaps widened
    if resumed is None and config.context_slices is not None:    # 2D to 2.5D, or back
        spec = replace(spec, context_slices=config.context_slices)
        spec.validate(f"{config.modality} training")
    if resumed is None and (config.input_size or config.pixel_mm):    # another input grid
        spec = replace(spec, size=config.input_size or spec.size,
                       spacing_mm=config.pixel_mm or spec.spacing_mm)
        spec.validate(f"{config.modality} training")
    cases = find_cases(config.data, config.modality, config.tumour_labels)
    train_cases, val_cases = split_by_patient(cases, config.val_fraction)
    spec = replace(spec, training_data={
        "digest": digest(cases), "cases": len(cases), "validation_cases": len(val_cases),
        "sources": [str(p) for p in config.data], "seed": config.seed,
        **({"fine_tuned_from": fine_tuned_from} if fine_tuned_from else {})})
    workers = config.workers if rank == 0 else 1
    train_data = load_all(train_cases, spec, workers)
    val_data = load_all(val_cases, spec, workers) if rank == 0 else []
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
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    start, history, best = 0, [], -1.0
    if resumed is not None:
        start, history, best = _resume(resumed, net, optimizer, generator, rng)
        _say(rank, f"resumed from {last} after epoch {start}")
    model = torch.nn.parallel.DistributedDataParallel(net) if world > 1 else net
    sampler = Sampler(train_data, config.crop or DEFAULT_CROP[config.modality],
                      config.positive_fraction, rng, by_lesion=config.sample_by_lesion,
                      faint_sd=config.favour_faint_sd,
                      shell_px=tuple(round(mm / spec.spacing_mm) for mm in SHELL_MM),
                      hard_negative_fraction=config.hard_negative_fraction,
                      favour_missed=config.favour_missed)
    total = config.epochs * config.steps_per_epoch
    for epoch in range(start, config.epochs):
        frozen = epoch < config.freeze_encoder_epochs
        mined = {}
        if config.hard_negative_fraction or config.favour_missed:
            run = whole_case_inference(net, spec, device, _slices(train_data))
            spots, peaks = review(run, train_data, round(FALSE_SPOT_MARGIN_MM / spec.spacing_mm),
                                  sampler.lesions if config.favour_missed else (),
                                  progress=rank == 0)
            if config.hard_negative_fraction:
                sampler.false_spots, mined["false_spots"] = spots, len(spots)
                _say(rank, f"epoch {epoch + 1}: {len(spots)} false spots in "
                           f"{len(train_data)} training cases")
            if config.favour_missed:
                mined["missed_lesions"] = sampler.set_missed(peaks)
                _say(rank, f"epoch {epoch + 1}: it misses {mined['missed_lesions']} of "
                           f"{len(peaks)} training lesions")
        net.train()
        set_encoder_trainable(net, not frozen)
        losses = []
        bar = tqdm(range(config.steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                   unit="step", disable=rank != 0)
        for step in bar:
            for group in optimizer.param_groups:
                group["lr"] = _learning_rate(config, epoch * config.steps_per_epoch + step, total)
            images, masks, tumour = (torch.from_numpy(a) for a in sampler.batch(config.batch_size))
            images, masks = augment(images, masks, config.augment, generator,
                                    spec.intensity.image_channels, spec.slices)
            tumour = masks.flatten(1).amax(dim=1, keepdim=True)   # what survived the warp
            weights = (lesion_weights(masks, config.balance_lesions_mm2 / spec.spacing_mm**2)
                       .to(device) if config.balance_lesions_mm2 else None)
            lesion_logits, tumour_logits = model(images.to(device))
            loss = detection_loss(lesion_logits, tumour_logits, masks.to(device),
                                  tumour.to(device), weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if rank == 0:
            metrics = validate(whole_case_inference(net, spec, device, _slices(val_data)),
                               val_data)
            history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                            "encoder_frozen": frozen, **mined, **metrics})
            improved = metrics["val_dice"] > best
            best = max(best, metrics["val_dice"])
            checkpoint = Checkpoint(net.config, spec, net.state_dict(), epoch + 1,
                                    optimizer.state_dict(), history,
                                    {"torch": generator.get_state(),
                                     "numpy": rng.bit_generator.state})
            save_checkpoint(last, checkpoint)
            if improved:
                save_checkpoint(config.out / "model.pt", checkpoint, slim=True)
            _say(rank, f"epoch {epoch + 1}: loss {history[-1]['train_loss']:.4f}, validation "
                       f"Dice {metrics['val_dice']:.4f}, slice AUC {metrics['val_slice_auc']}"
                       + (" (best)" if improved else ""))
        if world > 1:
            dist.barrier()
    if rank == 0:
        (config.out / "spec.json").write_text(spec.to_json() + "\n")
        (config.out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
        plot_history(history, config.out / "training.png")
    if world > 1:
        dist.destroy_process_group()
    return config.out / "model.pt" if rank == 0 else None


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


def _slices(cases: Sequence[CaseData]) -> int:
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


STEM_WEIGHTS = ("encoder.stem.conv1.weight", "encoder.stem.skip.0.weight")  # see the input


class StemLayout(NamedTuple):
    """What a network's input channels hold, in `with_neighbours` order: `slices` blocks of
    `image_channels` pixel channels (the slice, then its neighbours), then `descriptive`
    channels (an MR weighting code)."""

    image_channels: int
    slices: int = 1
    descriptive: int = 0

    @classmethod
    def of(cls, spec: ModelSpec) -> StemLayout:
        return cls(spec.intensity.image_channels, spec.slices, int(spec.intensity.weighting))

    @property
    def channels(self) -> int:
        return self.image_channels * self.slices + self.descriptive


def fit_stem(weight: torch.Tensor, source: StemLayout, target: StemLayout) -> torch.Tensor:
    """A stem weight (out, in, k, k) of a network whose input is laid out as `source`,
    refitted to `target`'s input, channel blocks matched by what they hold.

    A slice block with as many pixel channels as the source's keeps its weights;
    otherwise (CT's two windows into a one-channel PET model, say) each of its channels
    gets the mean of the source block's. A block the source lacks (the neighbours a 2D
    model never saw, an MR weighting code) starts at zero, so the network computes what
    the source did until training teaches it to use them.
    """
    if source == target:
        return weight
    fitted = weight.new_zeros((weight.shape[0], target.channels, *weight.shape[2:]))
    for block in range(min(source.slices, target.slices)):
        have = weight[:, block * source.image_channels:(block + 1) * source.image_channels]
        fitted[:, block * target.image_channels:(block + 1) * target.image_channels] = (
            have if source.image_channels == target.image_channels
            else have.mean(dim=1, keepdim=True))
    shared = min(source.descriptive, target.descriptive)
    start, end = source.channels - source.descriptive, target.channels - target.descriptive
    fitted[:, end:end + shared] = weight[:, start:start + shared]
    return fitted


def transfer_encoder(target: DetectionNet, source: DetectionNet,
                     target_layout: StemLayout | None = None,
                     source_layout: StemLayout | None = None) -> list[str]:
    """Copy the encoder weights of `source` into `target`; returns the copied names.
    A stem for another input is fitted (`fit_stem`); a layout not given is taken to be
    that many pixel channels of one slice."""
    own = target.state_dict()
    copied = []
    for name, tensor in source.state_dict().items():
        if not name.startswith("encoder.") or name not in own:
            continue
        if tensor.shape != own[name].shape:
            if name not in STEM_WEIGHTS:
                continue
            tensor = fit_stem(tensor, source_layout or StemLayout(tensor.shape[1]),
                              target_layout or StemLayout(own[name].shape[1]))
        own[name] = tensor.clone()
        copied.append(name)
    target.load_state_dict(own)
    return copied


def set_encoder_trainable(net: DetectionNet, trainable: bool) -> None:
    """Freeze or release the encoder; a frozen encoder also keeps its BatchNorm statistics."""
    for parameter in net.encoder.parameters():
        parameter.requires_grad_(trainable)
    net.encoder.train(trainable and net.training)


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
    best = max((h["val_dice"] for h in checkpoint.history), default=-1.0)
    return checkpoint.epoch, checkpoint.history, best


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
