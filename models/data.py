"""Training data: cases on disk -> network-grid arrays, through the appliance's own
reader and preprocessing, so a model trains on exactly what it will see deployed.

Two layouts are understood:

- DICOM series with masks: one folder per series holding its DICOM files and `mask.npz`
  (`labels`: lesion ids per voxel, slices in anatomical order; `sop_instance_uids`: the
  slice of each mask plane). `scanside synth` writes this layout; convert other masks
  to it to train on your own DICOM data.
- Medical Segmentation Decathlon: `dataset.json`, `imagesTr/*.nii.gz`, `labelsTr/*.nii.gz`
  (LiTS- and KiTS-style data). Tumour labels are those whose names say tumour, tumor,
  cancer, lesion, nodule or metastasis, unless given explicitly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from scipy import ndimage
from tqdm import tqdm

from edge.errors import DicomError, ModelError
from edge.inference.postprocess import NEIGHBOURS
from edge.inference.preprocess import neighbours, preprocess, resample, with_neighbours
from edge.inference.spec import ModelSpec
from edge.ingest.reader import read_file
from edge.series.geometry import analyse_geometry
from edge.values import Patient, Rescale, Slice, SliceHeader
from models.pool import process_pool

TUMOUR_WORDS = re.compile(r"tumou?r|cancer|lesion|nodule|metasta|mass", re.IGNORECASE)
# Decathlon channel names (dataset.json "modality") that each modality reads, first match
# taken: BrainTumour has FLAIR, T1w, t1gd, T2w; Prostate T2 and ADC.
CHANNEL_NAMES = {"CT": ("CT",), "PT": ("PET", "PT"),
                 "MR": ("MR", "T2", "T1", "FLAIR", "PD", "ADC", "DWI")}
NOT_DICOM = {".json", ".npz", ".nii", ".gz", ".png", ".txt", ".md"}


@dataclass
class CaseData:
    """One case on the network grid."""

    name: str
    images: np.ndarray      # (slices, channels, size, size) float16, each slice alone
    masks: np.ndarray       # (slices, size, size) uint8: 1 inside a lesion
    context_slices: int = 0   # the model's (`ModelSpec.context_slices`) ...
    image_channels: int = 1   # ... and its pixel channels a slice (`Intensity.image_channels`)

    @property
    def tumour(self) -> np.ndarray:
        return self.masks.reshape(len(self.masks), -1).any(axis=1)

    def inputs(self, slices: Iterable[int]) -> np.ndarray:
        """The network inputs (float32) of these slices, a 2.5D model's with each slice's
        neighbours stacked as the appliance stacks them (`with_neighbours`)."""
        return np.stack([with_neighbours(self.images[s], [
            self.images[j] for j in neighbours(s, len(self.images), self.context_slices)],
            self.image_channels) for s in slices]).astype(np.float32)


@dataclass(frozen=True)
class DicomCase:
    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir()
                      if p.is_file() and not {s.lower() for s in p.suffixes} & NOT_DICOM)

    def slices(self) -> tuple[list[Slice], list[np.ndarray]]:
        """Planes and their masks in anatomical order, as the appliance orders a series
        (`analyse_geometry`): file names say nothing of position, and a lesion is a 3D
        region of the mask stack (`lesion_voxels`) only when neighbouring planes are
        neighbours in it."""
        saved = np.load(self.folder / "mask.npz")
        by_uid = dict(zip(saved["sop_instance_uids"].tolist(), saved["labels"], strict=True))
        planes, masks = [], []
        for path in self.files():
            try:
                found = read_file(str(path))
            except DicomError as error:
                raise ModelError(f"training case {self.folder}: {error}") from error
            for plane in found:
                mask = by_uid.get(plane.header.sop_instance_uid)
                if mask is None:
                    raise ModelError(f"{self.folder}/mask.npz has no plane for "
                                     f"SOPInstanceUID {plane.header.sop_instance_uid}")
                planes.append(plane)
                masks.append(mask > 0)
        order = analyse_geometry([p.header for p in planes]).order
        return [planes[i] for i in order], [masks[i] for i in order]


@dataclass(frozen=True)
class NiftiCase:
    image: Path
    label: Path
    modality: str
    tumour_labels: tuple[int, ...]
    channel: int = 0
    mr_weighting: str = ""     # from the channel's name: T1, T2 (FLAIR too) or ""

    @property
    def name(self) -> str:
        return self.image.name.split(".")[0]

    def slices(self) -> tuple[list[Slice], list[np.ndarray]]:
        import nibabel

        image = nibabel.load(self.image)
        label = np.asanyarray(nibabel.load(self.label).dataobj)
        data = np.asanyarray(image.dataobj)
        if data.ndim == 4:
            data = data[..., self.channel]
        if data.shape != label.shape:
            raise ModelError(f"{self.label}: shape {label.shape} differs from the image's "
                             f"{data.shape}")
        headers = nifti_headers(image.affine, data.shape, self.modality, str(self.image),
                                self.mr_weighting)
        planes = [Slice(h, np.ascontiguousarray(data[:, :, k].T)) for k, h in enumerate(headers)]
        masks = [np.isin(label[:, :, k].T, self.tumour_labels) for k in range(data.shape[2])]
        return planes, masks


def nifti_headers(affine: np.ndarray, shape: tuple[int, ...], modality: str,
                  path: str, mr_weighting: str = "") -> list[SliceHeader]:
    """DICOM-style headers for the axial planes of a NIfTI volume.

    NIfTI's affine maps voxels to RAS+; DICOM patient coordinates are LPS+. Plane k is
    `data[:, :, k].T`, so a row runs along the first voxel axis.
    """
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    along_i, along_j = lps[:3, 0], lps[:3, 1]
    spacing = (float(np.linalg.norm(along_j)), float(np.linalg.norm(along_i)))
    orientation = tuple(float(v) for v in (*along_i / spacing[1], *along_j / spacing[0]))
    series = generate_uid(entropy_srcs=[path])
    units = {"CT": "HU", "PT": "GML"}.get(modality, "stored")
    return [SliceHeader(
        path=path, sop_instance_uid=generate_uid(entropy_srcs=[path, str(k)]), frame=0,
        n_frames=1, series_uid=series, study_uid=series, frame_of_reference_uid=None,
        sop_class_uid="", transfer_syntax_uid="", modality=modality, rows=shape[1],
        columns=shape[0], bits_allocated=32, bits_stored=32, signed=True,
        position_mm=tuple(float(v) for v in lps @ np.array([0, 0, k, 1.0]))[:3],
        orientation=orientation, spacing_mm=spacing, slice_thickness_mm=float(
            np.linalg.norm(lps[:3, 2])), expected_count=shape[2], instance_number=k + 1,
        rescale=Rescale(), units=units, series_description="NIfTI", mr_weighting=mr_weighting,
        patient=Patient())
        for k in range(shape[2])]


def find_cases(paths: Iterable[Path], modality: str,
               tumour_labels: Sequence[int] | None = None) -> list[DicomCase | NiftiCase]:
    """Every case under `paths`, of the given modality."""
    cases: list[DicomCase | NiftiCase] = []
    for path in map(Path, paths):
        if (path / "dataset.json").exists():
            cases += _decathlon(path, modality, tumour_labels)
        elif (path / "mask.npz").exists():
            cases.append(DicomCase(path))
        else:
            for folder in sorted(p for p in path.iterdir() if (p / "mask.npz").exists()):
                truth = folder / "truth.json"
                if not truth.exists() or json.loads(truth.read_text())["modality"] == modality:
                    cases.append(DicomCase(folder))
    if not cases:
        raise ModelError(f"no {modality} cases found under {', '.join(map(str, paths))}: "
                         "expected series folders with mask.npz, or a Decathlon dataset.json")
    return cases


def _decathlon(root: Path, modality: str, tumour_labels) -> list[NiftiCase]:
    info = json.loads((root / "dataset.json").read_text())
    modalities = {int(k): v.upper() for k, v in info.get("modality", {}).items()}
    channel = next((k for k, v in sorted(modalities.items())
                    if v.startswith(CHANNEL_NAMES[modality])), None)
    if channel is None:
        raise ModelError(f"{root}/dataset.json: no {modality} channel in modality "
                         f"{info.get('modality')}")
    if tumour_labels is None:
        tumour_labels = tuple(int(k) for k, v in info.get("labels", {}).items()
                              if TUMOUR_WORDS.search(str(v)))
    if not tumour_labels:
        raise ModelError(f"{root}/dataset.json: no label names a tumour in "
                         f"{info.get('labels')}; name them with --tumour-labels")
    name = modalities[channel]
    weighting = ("T2" if name.startswith(("T2", "FLAIR")) else      # CT and PET names are
                 "T1" if name.startswith("T1") else "")              # neither
    return [NiftiCase(root / item["image"], root / item["label"], modality,
                      tuple(tumour_labels), channel, weighting) for item in info["training"]]


def prepare(case: DicomCase | NiftiCase, spec: ModelSpec) -> CaseData:
    """Read one case and bring images and masks onto the network grid."""
    planes, masks = case.slices()
    images, grid_masks = [], []
    for plane, mask in zip(planes, masks, strict=True):
        image, grid = preprocess(plane, spec)
        images.append(image.astype(np.float16))
        grid_masks.append(resample(mask.astype(np.float32), grid, antialias=False) >= 0.5)
    return CaseData(case.name, np.stack(images), np.stack(grid_masks).astype(np.uint8),
                    spec.context_slices, spec.intensity.image_channels)


def load_all(cases: Sequence, spec: ModelSpec, workers: int = 1) -> list[CaseData]:
    """Prepare every case, in `workers` processes, with a progress bar."""
    bar = tqdm(total=len(cases), desc="preparing cases", unit="case")
    if workers <= 1:
        out = []
        for case in cases:
            out.append(prepare(case, spec))
            bar.update()
    else:
        with process_pool(workers) as pool:
            out = []
            for data in pool.map(prepare, cases, [spec] * len(cases)):
                out.append(data)
                bar.update()
    bar.close()
    return out


def digest(cases: Sequence) -> str:
    """Identifies a training set: names and sizes of every file in it."""
    h = hashlib.sha256()
    for case in sorted(cases, key=lambda c: c.name):
        files = case.files() if isinstance(case, DicomCase) else [case.image, case.label]
        extra = [case.folder / "mask.npz"] if isinstance(case, DicomCase) else []
        for path in [*files, *extra]:
            h.update(f"{case.name}/{Path(path).name}:{Path(path).stat().st_size}\n".encode())
    return h.hexdigest()


def split_by_patient(cases: Sequence, fraction: float) -> tuple[list, list]:
    """(training, validation): whole cases, never slices of one case on both sides.

    A case's side follows from a hash of its name alone, not from the training seed or the
    other cases: a model fine-tuned on more series, or with another seed, is never
    validated on a case its starting point was trained on. The validation share is about
    `fraction`; at least one case when there are two or more."""
    def draw(case) -> float:
        return int.from_bytes(hashlib.sha256(case.name.encode()).digest()[:8], "big") / 2**64

    val = {c.name for c in cases if draw(c) < fraction}
    if not val and len(cases) > 1:
        val = {min(cases, key=draw).name}
    return [c for c in cases if c.name not in val], [c for c in cases if c.name in val]


# A lesion's surroundings: this far beyond its radius (evaluation's conspicuity) or its
# edge (`lesion_contrast`, for sampling faint lesions in training).
SHELL_MM = (4.0, 12.0)


class Sampler:
    """Batches of (image, mask, tumour) crops; a share of them centred near a lesion.

    A positive crop is centred (with jitter) on a lesion voxel. By default the voxel is
    drawn from every lesion voxel of every slice that has one, so a lesion is drawn in
    proportion to its volume: a 30 mm lesion about 200 times as often as a 5 mm one.
    With `by_lesion` a lesion (a 3D connected region of a case's mask) is drawn first,
    each as often as any other, and then one of its voxels. With `faint_sd` as well, a
    lesion that stands out from its surroundings by less than that many standard
    deviations (`lesion_contrast`, in-plane shell `shell_px`) is drawn faint_sd/contrast
    times as often, at most `MAX_FAINT_WEIGHT` times (one whose contrast cannot be
    measured, once). With `favour_missed` as well, `set_missed` (the trainer calls it
    before every epoch) draws each lesion that the network then misses (no voxel of it at
    0.5 or more) that many times as often again.

    A `hard_negative_fraction` of crops is centred (with the same jitter) on one of
    `false_spots`, (case, slice, row, column) peaks of where a network marks a lesion that
    is not there (`false_spot_peaks`), each spot as often as any other; the trainer sets
    them. The rest are anywhere on a random slice."""

    MAX_FAINT_WEIGHT = 4.0

    def __init__(self, cases: Sequence[CaseData], crop: int | None, positive_fraction: float,
                 rng: np.random.Generator, by_lesion: bool = False, faint_sd: float = 0.0,
                 shell_px: tuple[int, int] = (2, 6), hard_negative_fraction: float = 0.0,
                 favour_missed: float = 0.0):
        self.cases, self.crop, self.rng = cases, crop, rng
        self.positive_fraction = positive_fraction
        self.hard_negative_fraction = hard_negative_fraction
        self.false_spots: list[tuple[int, int, int, int]] = []
        self.index = [(c, s) for c, case in enumerate(cases) for s in range(len(case.images))]
        self.positives = [(c, s) for c, case in enumerate(cases)
                          for s in np.flatnonzero(case.tumour)]
        by_lesion = by_lesion or faint_sd > 0 or favour_missed > 0
        self.lesions = [(c, voxels) for c, case in enumerate(cases)
                        for voxels in lesion_voxels(case.masks)] if by_lesion else None
        self.favour_missed = favour_missed
        self.lesion_weight: np.ndarray | float = 1.0      # every lesion as likely
        self.lesion_p = None            # None: uniform, drawn as before weights existed
        if faint_sd > 0 and self.lesions:
            contrast = np.array([lesion_contrast(cases[c], voxels, shell_px)
                                 for c, voxels in self.lesions])
            weight = np.clip(faint_sd / np.maximum(contrast, 1e-6), 1.0, self.MAX_FAINT_WEIGHT)
            weight[np.isnan(contrast)] = 1.0
            self.lesion_weight, self.lesion_p = weight, weight / weight.sum()

    def set_missed(self, peaks: Sequence[float]) -> int:
        """Given each lesion's highest probability under the network (in `lesions` order),
        draw the missed ones (under 0.5) `favour_missed` times as often; returns how many."""
        missed = np.asarray(peaks) < 0.5
        weight = self.lesion_weight * np.where(missed, self.favour_missed, 1.0)
        self.lesion_p = weight / weight.sum()
        return int(missed.sum())

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images, masks = [], []
        hard = self.positive_fraction + self.hard_negative_fraction
        for _ in range(size):
            draw = self.rng.random() if self.positives or self.false_spots else 1.0
            if self.positives and draw < self.positive_fraction:
                c, s, centre = self._lesion_voxel()
            elif self.false_spots and self.positive_fraction <= draw < hard:
                c, s, row, col = self.false_spots[self.rng.integers(len(self.false_spots))]
                centre = (row, col)
            else:
                (c, s), centre = self.index[self.rng.integers(len(self.index))], None
            image, mask = self._crop(self.cases[c].inputs([s])[0], self.cases[c].masks[s],
                                     centre)
            images.append(image)
            masks.append(mask)
        masks = np.stack(masks)[:, None].astype(np.float32)
        tumour = masks.reshape(size, -1).max(axis=1, keepdims=True)
        return np.stack(images).astype(np.float32), masks, tumour

    def _lesion_voxel(self) -> tuple[int, int, tuple[int, int]]:
        """(case, slice, (row, column)) of a lesion voxel."""
        if self.lesions is not None:
            c, voxels = self.lesions[self.rng.choice(len(self.lesions), p=self.lesion_p)]
            s, row, col = voxels[self.rng.integers(len(voxels))]
            return c, int(s), (int(row), int(col))
        c, s = self.positives[self.rng.integers(len(self.positives))]
        rows, cols = np.nonzero(self.cases[c].masks[s])
        k = self.rng.integers(len(rows))
        return c, s, (int(rows[k]), int(cols[k]))

    def _crop(self, image, mask, centre: tuple[int, int] | None):
        size = image.shape[-1]
        if not self.crop or self.crop >= size:
            return image, mask
        if centre is not None:
            jitter = self.rng.integers(-self.crop // 3, self.crop // 3 + 1, 2)
            top = centre[0] - self.crop // 2 + jitter[0]
            left = centre[1] - self.crop // 2 + jitter[1]
        else:
            top, left = self.rng.integers(0, size - self.crop + 1, 2)
        top = int(np.clip(top, 0, size - self.crop))
        left = int(np.clip(left, 0, size - self.crop))
        window = (slice(top, top + self.crop), slice(left, left + self.crop))
        return image[(slice(None), *window)], mask[window]


def false_spot_peaks(probabilities: np.ndarray, masks: np.ndarray, margin_px: int,
                     threshold: float = 0.5) -> list[tuple[int, int, int]]:
    """Where a network marks a lesion that is not there, in one case: the (slice, row,
    column) of the most probable pixel of each region, connected on its slice, of pixels
    at `threshold` or above that lie more than `margin_px` pixels (in the plane) from
    every lesion pixel of `masks`. Both arrays are (slices, rows, columns). Regions come
    in label order; of equally probable pixels (a saturated network gives many) the first
    in C order is taken."""
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = True
    near = (ndimage.binary_dilation(masks > 0, structure=in_plane, iterations=margin_px)
            if margin_px else masks > 0)          # iterations=0 would grow them to fill
    labels, _ = ndimage.label((probabilities >= threshold) & ~near, structure=in_plane)
    # Only the marked pixels are sorted: ndimage.maximum_position over the whole volume
    # took seconds a CT case even for a handful of regions.
    where = np.flatnonzero(labels)
    region, value = labels.ravel()[where], probabilities.ravel()[where]
    order = np.lexsort((-value, region))          # by region, most probable first; stable
    first = order[np.flatnonzero(np.diff(region[order], prepend=0))]
    return [tuple(int(i) for i in peak)
            for peak in zip(*np.unravel_index(where[first], labels.shape), strict=True)]


def lesion_voxels(masks: np.ndarray) -> list[np.ndarray]:
    """Each lesion of a case's mask stack (slices, rows, columns), a 3D region connected
    as `find_lesions` connects them (`NEIGHBOURS`), as the (slice, row, column) of its voxels."""
    labels, _ = ndimage.label(masks, structure=NEIGHBOURS)
    return [np.argwhere(labels[box] == index) + [s.start for s in box]
            for index, box in enumerate(ndimage.find_objects(labels), start=1)]


def lesion_contrast(case: CaseData, voxels: np.ndarray, shell_px: tuple[int, int]) -> float:
    """How far one lesion (its voxels, as `lesion_voxels` gives them) stands out in the
    network input (first channel): its mean minus that of an in-plane shell `shell_px`
    pixels beyond it on its own slices (other lesions left out), in standard deviations
    of the shell; the training-grid counterpart of `models.evaluate.conspicuity`. NaN
    when the shell has under 8 pixels."""
    inside, shell = [], []
    near, far = (np.ones((2 * r + 1,) * 2, bool) for r in shell_px)
    for s in np.unique(voxels[:, 0]):
        here = np.zeros(case.masks.shape[1:], bool)
        rows, columns = voxels[voxels[:, 0] == s, 1:].T
        here[rows, columns] = True
        ring = (ndimage.binary_dilation(here, far) & ~ndimage.binary_dilation(here, near)
                & ~case.masks[s].astype(bool))
        image = case.images[s, 0].astype(np.float64)
        inside.append(image[here])
        shell.append(image[ring])
    shell = np.concatenate(shell)
    if len(shell) < 8:
        return float("nan")
    return float(abs(np.concatenate(inside).mean() - shell.mean()) / max(shell.std(), 1e-3))
