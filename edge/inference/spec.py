"""What a model needs to know about its input and output, shipped with the model.

The spec travels inside every model file (torch checkpoint, ONNX metadata), so the
appliance never guesses how a model wants its input: the modality, the in-plane pixel
spacing and size it was trained at, the intensity normalisation, its thresholds and where
its training data came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from edge.errors import ModelError

INTENSITY_KINDS = ("ct_windows", "mr_zscore", "pet_suv")
LESION_SCORES = ("peak", "mean")


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


@dataclass(frozen=True)
class Thresholds:
    lesion_probability: float = 0.5      # a pixel belongs to a lesion above this
    detection_probability: float = 0.5   # a lesion is reported when its probability reaches this
    lesion_score: str = "peak"           # a lesion's probability: its pixels' "peak" or "mean"
    slice_head: bool = False             # the slice head caps a lesion's probability (calibrated)
    min_volume_mm3: float = 15.0         # smaller 3D components are dropped
    provisional_probability: float = 0.8  # a slice alone raises a provisional alert above
    provisional_diameter_mm: float = 6.0  # ... when the lesion on it is at least this wide


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

    @property
    def channels(self) -> int:
        return self.intensity.channels

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "model spec") -> ModelSpec:
        try:
            data = json.loads(text)
            intensity = data.pop("intensity")
            thresholds = data.pop("thresholds", {})
            spec = cls(intensity=Intensity(
                kind=intensity["kind"],
                windows=tuple(tuple(w) for w in intensity.get("windows", ())),
                clip=intensity.get("clip", 5.0), scale=intensity.get("scale", 1.0),
                weighting=intensity.get("weighting", False)),
                thresholds=Thresholds(**thresholds),
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
        if not 16 <= self.size <= 2048 or not 0 < self.spacing_mm <= 20:
            problems.append(f"size {self.size} / spacing_mm {self.spacing_mm}: expected "
                            "16-2048 pixels and 0-20 mm")
        if not 0 < self.thresholds.lesion_probability < 1:
            problems.append(f"thresholds.lesion_probability {self.thresholds.lesion_probability}"
                            ": expected between 0 and 1")
        if self.thresholds.lesion_score not in LESION_SCORES:
            problems.append(f"thresholds.lesion_score {self.thresholds.lesion_score!r}: "
                            f"expected one of {LESION_SCORES}")
        if problems:
            raise ModelError(f"{source}: " + "; ".join(problems))
