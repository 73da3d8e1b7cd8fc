"""What a model needs to know about its input and output, shipped with the model.

The spec travels inside every model file (torch checkpoint, ONNX metadata), so the
appliance never guesses how a model wants its input: the modality, the in-plane pixel
spacing and size it was trained at, the intensity normalisation, its thresholds and where
its training data came from.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from edge.errors import ModelError

INTENSITY_KINDS = ("ct_windows", "mr_zscore", "pet_suv")
LESION_SCORES = ("peak", "mean", "classifier")
# What the lesion classifier may weigh, as `edge.inference.postprocess` measures it for each
# candidate lesion (a 3D component of pixels above the pixel threshold):
LESION_FEATURES = (
    "peak_logit",        # logit of its highest pixel probability
    "mean_logit",        # logit of its mean pixel probability
    "log_soft_volume",   # log(1 + sum of its pixel probabilities x voxel volume in mm3)
    "log_volume",        # log of its volume in mm3
    "slices",            # how many slices it spans
    "log_depth_ratio",   # log of its depth in mm (slices x slice spacing) over the diameter
                         # of its mean cross-section: a flat one-slice spot is well below 0
    "head_max_logit",    # logit of the slice head's highest probability over those slices
    "head_mean_logit",   # logit of the slice head's mean probability over them
    "saturated",         # fraction of its pixels at probability >= 0.99
    "image_mean",        # its mean network input (first channel, 0-1 over the channel's range)
    "image_max",         # its highest network input
    "contrast",          # image_mean minus the mean of a 3-pixel ring around it
    "contrast_sd",       # that difference in standard deviations of the ring
    "abs_contrast",      # the size of the difference, darker or brighter (MR lesions are
    "abs_contrast_sd",   # darker than their organ in T1, brighter in T2)
    "persistence",       # how much of its contrast goes on ~5 mm past its end slices, as
                         # a fraction (a lesion ends: near 0; a vessel goes on: near 1)
)


@dataclass(frozen=True)
class Intensity:
    """How physical values become network input channels.

    ct_windows: one channel per (low, high) HU window, clipped and scaled to 0-1.
    mr_zscore:  one channel, z-scored within the body mask, clipped to +-clip; with
                `weighting`, a second channel, constant over the slice, says what the
                echo and repetition times weight it by (`WEIGHTING_CODES`): a lesion
                darker than its organ is typical in T1 and a flow void in T2.
    pet_suv:    one channel, SUVbw divided by `scale`, clipped to 0-clip.
    """

    kind: str
    windows: tuple[tuple[float, float], ...] = ()
    clip: float = 5.0
    scale: float = 1.0
    weighting: bool = False

    @property
    def image_channels(self) -> int:
        """Channels that carry pixel values (augmentation jitters these, and only these)."""
        return len(self.windows) if self.kind == "ct_windows" else 1

    @property
    def channels(self) -> int:
        return self.image_channels + self.weighting


WEIGHTING_CODES = {"T1": -1.0, "T2": 1.0}   # SliceHeader.mr_weighting -> channel value; else 0
MAX_CONTEXT_SLICES = 3


@dataclass(frozen=True)
class Thresholds:
    lesion_probability: float = 0.5      # a pixel belongs to a lesion above this
    detection_probability: float = 0.5   # a lesion is reported when its probability reaches this
    # ... and, in a series holding such a lesion, from this lower probability too (None:
    # never); the series is called positive by the first alone (calibrated)
    companion_probability: float | None = None
    lesion_score: str = "peak"           # a lesion's probability: its pixels' "peak" or "mean"
    slice_head: bool = False             # the slice head caps a lesion's probability (calibrated)
    min_volume_mm3: float = 15.0         # smaller 3D components are dropped
    provisional_probability: float = 0.8  # a slice alone raises a provisional alert above
    provisional_diameter_mm: float = 6.0  # ... when the lesion on it is at least this wide


@dataclass(frozen=True)
class LesionClassifier:
    """Logistic regression from a candidate lesion's measures (LESION_FEATURES) to the
    probability that it is a lesion; fitted by `scanside calibrate`, used when
    `thresholds.lesion_score` is "classifier"."""

    features: tuple[str, ...]
    mean: tuple[float, ...]              # standardisation of each feature ...
    scale: tuple[float, ...]             # ... before its weight applies
    weights: tuple[float, ...]
    bias: float

    def probability(self, measures: dict[str, float]) -> float:
        z = self.bias + sum(w * (measures[f] - m) / s for f, m, s, w in zip(
            self.features, self.mean, self.scale, self.weights, strict=True))
        return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclass(frozen=True)
class ModelSpec:
    modality: str
    size: int                            # network input is size x size
    spacing_mm: float                    # in-plane pixel spacing of the network input
    intensity: Intensity
    thresholds: Thresholds = Thresholds()
    name: str = ""
    version: str = "0"
    classes: tuple[str, ...] = ("background", "tumour")
    training_data: dict = field(default_factory=dict)   # digest, description, cases
    lesion_classifier: LesionClassifier | None = None   # scores lesions under "classifier"
    # 2.5D: the network also sees this many neighbouring slices on each side
    # (`edge.inference.preprocess.with_neighbours` says how they are stacked)
    context_slices: int = 0
    # The network also sees each input mirrored left to right, and its maps are the mean
    # of the two (the mirror's mirrored back): twice the cost, a steadier probability.
    # Set by `scanside calibrate --mirror`, since the thresholds are chosen on its maps.
    mirror: bool = False

    @property
    def network_runs(self) -> int:
        """Network inputs a slice costs: 2 with the mirror."""
        return 1 + self.mirror

    @property
    def slices(self) -> int:
        """Slices in one network input: the slice itself and its neighbours."""
        return 1 + 2 * self.context_slices

    @property
    def channels(self) -> int:
        return self.intensity.image_channels * self.slices + self.intensity.weighting

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model spec") -> ModelSpec:
        try:
            data = json.loads(text)
            intensity = data.pop("intensity")
            thresholds = data.pop("thresholds", {})
            classifier = data.pop("lesion_classifier", None)
            if classifier is not None:
                classifier = LesionClassifier(**{k: v if k == "bias" else tuple(v)
                                                 for k, v in classifier.items()})
            spec = cls(intensity=Intensity(
                kind=intensity["kind"],
                windows=tuple(tuple(w) for w in intensity.get("windows", ())),
                clip=intensity.get("clip", 5.0), scale=intensity.get("scale", 1.0),
                weighting=intensity.get("weighting", False)),
                thresholds=Thresholds(**thresholds), lesion_classifier=classifier,
                classes=tuple(data.pop("classes", ("background", "tumour"))), **data)
        except (ValueError, KeyError, TypeError) as error:
            raise ModelError(f"{source}: not a valid model spec: {error}") from error
        spec.validate(source)
        return spec

    def validate(self, source: str = "model spec") -> None:
        problems = []
        if self.modality not in ("CT", "MR", "PT"):
            problems.append(f"modality {self.modality!r}: expected CT, MR or PT")
        if self.intensity.kind not in INTENSITY_KINDS:
            problems.append(f"intensity.kind {self.intensity.kind!r}: expected one of "
                            f"{INTENSITY_KINDS}")
        if self.intensity.kind == "ct_windows" and not self.intensity.windows:
            problems.append("intensity.windows is empty: ct_windows needs at least one")
        if self.intensity.weighting and self.intensity.kind != "mr_zscore":
            problems.append(f"intensity.weighting with {self.intensity.kind!r}: only "
                            "mr_zscore has a weighting channel")
        if self.context_slices not in range(MAX_CONTEXT_SLICES + 1):
            problems.append(f"context_slices {self.context_slices!r}: expected a whole number "
                            f"from 0 to {MAX_CONTEXT_SLICES}")
        if not 16 <= self.size <= 2048 or not 0 < self.spacing_mm <= 20:
            problems.append(f"size {self.size} / spacing_mm {self.spacing_mm}: expected "
                            "16-2048 pixels and 0-20 mm")
        if not 0 < self.thresholds.lesion_probability < 1:
            problems.append(f"thresholds.lesion_probability {self.thresholds.lesion_probability}"
                            ": expected between 0 and 1")
        companion = self.thresholds.companion_probability
        if companion is not None and not 0 <= companion <= self.thresholds.detection_probability:
            problems.append(f"thresholds.companion_probability {companion}: expected from 0 to "
                            "the detection probability "
                            f"({self.thresholds.detection_probability})")
        if self.thresholds.lesion_score not in LESION_SCORES:
            problems.append(f"thresholds.lesion_score {self.thresholds.lesion_score!r}: "
                            f"expected one of {LESION_SCORES}")
        classifier = self.lesion_classifier
        if self.thresholds.lesion_score == "classifier" and classifier is None:
            problems.append('thresholds.lesion_score "classifier" without a lesion_classifier')
        if classifier is not None:
            unknown = sorted(set(classifier.features) - set(LESION_FEATURES))
            if unknown:
                problems.append(f"lesion_classifier.features {unknown}: expected among "
                                f"{LESION_FEATURES}")
            if any(not scale > 0 for scale in classifier.scale):
                problems.append(f"lesion_classifier.scale {list(classifier.scale)}: expected "
                                "every scale above 0")
            lengths = {len(classifier.features), len(classifier.mean), len(classifier.scale),
                       len(classifier.weights)}
            if len(lengths) != 1:
                problems.append("lesion_classifier: features, mean, scale and weights differ "
                                f"in length ({sorted(lengths)})")
        if problems:
            raise ModelError(f"{source}: " + "; ".join(problems))
