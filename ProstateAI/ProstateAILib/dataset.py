"""Training data: case discovery (three layouts), acquisition groups, stratified split,
in-memory preprocessed cases, and the augmenting foreground-balanced patch sampler.

Dataset descriptions accepted by `discover_cases`:
- a folder of PROMISE12-style pairs `<case>_t2.nii.gz` + `<case>_prostate.nii.gz`;
- an nnU-Net / MSD raw folder: `imagesTr/<case>_0000.nii.gz` (+ `_0001`... extra channels) and
  `labelsTr/<case>.nii.gz` (or `<case>.seg.nrrd`, e.g. a corrected Slicer segmentation);
- a JSON file: `[{"image": path or [paths], "label": path, "group": optional, "name": optional,
  "spacing": optional [x, y, z] mm}]` (relative paths are relative to the JSON file), or an MSD-style
  `{"training": [...]}`. "spacing" replaces the files' voxel size for data whose header spacing is
  only nominal (PROMISE12); `calibrate_group_spacing` estimates it per acquisition group.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch.nn import functional as F

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import require_same_grid
from ProstateAICore.imageio import read_image, read_json, suffix_of

from . import preprocess, segfile


@dataclass
class Case:
    name: str
    images: list[str]  # one path per channel, T2 first
    label: str | None
    group: str | None = None
    spacing: tuple[float, float, float] | None = None  # overrides the files' voxel size (nominal-spacing data)
    segments: dict[str, int] | None = None  # .seg.nrrd label: segment name -> label value (default Prostate=1)


@dataclass
class PreparedCase:
    """A case preprocessed onto the working grid, kept in memory for the whole run."""

    name: str
    group: str
    image: np.ndarray  # float32 (C, Z, Y, X), normalised
    label: np.ndarray  # uint8 (Z, Y, X) on the working grid
    foreground: np.ndarray  # int32 (N, 3) voxel indices with label > 0 (subsampled)
    working: sitk.Image = field(repr=False)  # working-grid geometry
    original: sitk.Image = field(repr=False)  # original label (geometry + truth for validation)


# ---------------------------------------------------------------- discovery

def _strip(path: Path) -> str:
    return path.name[: -len(suffix_of(path))]


def _from_pairs(folder: Path) -> list[Case]:
    cases = []
    for image in sorted(folder.glob("*_t2.nii*")):
        name = _strip(image)[: -len("_t2")]
        label = next(iter(sorted(folder.glob(f"{name}_prostate.nii*"))), None)
        if label is not None:
            cases.append(Case(name, [str(image)], str(label)))
    return cases


def _from_nnunet(folder: Path) -> list[Case]:
    channels = defaultdict(dict)
    for image in sorted((folder / "imagesTr").glob("*.nii*")):
        match = re.fullmatch(r"(.+)_(\d{4})", _strip(image))
        if match:
            channels[match.group(1)][int(match.group(2))] = str(image)
    cases = []
    for name, chans in sorted(channels.items()):
        labels = sorted((folder / "labelsTr").glob(f"{name}.nii*")) + sorted((folder / "labelsTr").glob(f"{name}.seg.nrrd"))
        label = next(iter(labels), None)  # a .seg.nrrd (a corrected segmentation) counts as a label too
        if label is None:
            continue
        if sorted(chans) != list(range(len(chans))):
            raise InputError(f"Case '{name}' in {folder / 'imagesTr'} has channels {sorted(chans)}; expected 0000, 0001, ...")
        cases.append(Case(name, [chans[i] for i in range(len(chans))], str(label)))
    return cases


def _from_json(path: Path) -> list[Case]:
    entries = read_json(path, "Dataset list")
    if isinstance(entries, dict):  # MSD dataset.json style {"training": [...]}
        entries = entries.get("training", [])
    cases = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"Entry {index} of '{path}' needs 'image' and 'label'.")
        images = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        images = [str((path.parent / p).resolve()) if not Path(p).is_absolute() else p for p in images]
        label = entry["label"]
        label = str((path.parent / label).resolve()) if not Path(label).is_absolute() else label
        name = entry.get("name") or _strip(Path(images[0])).removesuffix("_0000").removesuffix("_t2")
        cases.append(Case(name, images, label, entry.get("group"), _spacing_of(entry, index, path),
                          _segments_of(entry, index, path)))
    return cases


def _segments_of(entry: dict, index: int, path: Path) -> dict[str, int] | None:
    """An entry's "segments" ({"PZ": 1, "TZ": 2}): which segments of a .seg.nrrd label become which values."""
    segments = entry.get("segments")
    if segments is None:
        return None
    if not isinstance(segments, dict) or not all(isinstance(k, str) and isinstance(v, int) and 0 < v < 256
                                                 for k, v in segments.items()):
        raise InputError(f"Entry {index} of '{path}': 'segments' must map segment names to label values 1-255.")
    return segments


def read_label(case: Case, reference: sitk.Image) -> sitk.Image:
    """A case's label map: an image file, or a .seg.nrrd (e.g. a corrected Slicer segmentation) turned
    into labels by segment name or SNOMED CT code (`case.segments`, default {"Prostate": 1})."""
    if str(case.label).lower().endswith(".seg.nrrd"):
        from .pipeline import SEGMENTS

        codes = {name: code[0] for name, _, _, _, code in SEGMENTS}
        return segfile.segment_label_map(case.label, case.segments or {"Prostate": 1}, reference, codes)
    return read_image(case.label)


def _spacing_of(entry: dict, index: int, path: Path) -> tuple[float, float, float] | None:
    spacing = entry.get("spacing")
    if spacing is None:
        return None
    try:
        values = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"Entry {index} of '{path}': 'spacing' must be three positive numbers (x, y, z mm), got {spacing!r}.")
    return values


def discover_cases(spec: str | Path) -> list[Case]:
    """Cases from a folder (PROMISE12 pairs or nnU-Net layout) or a JSON list."""
    spec = Path(spec)
    if not spec.exists():
        raise InputError(f"Dataset '{spec}' does not exist.")
    if spec.is_file():
        cases = _from_json(spec)
    elif (spec / "imagesTr").is_dir():
        cases = _from_nnunet(spec)
    else:
        cases = _from_pairs(spec)
    if not cases:
        raise InputError(
            f"No labelled cases found in '{spec}' (expected <case>_t2.nii.gz + <case>_prostate.nii.gz, "
            "imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz, or a JSON list)."
        )
    n_channels = {len(c.images) for c in cases}
    if len(n_channels) > 1:
        raise InputError(f"Cases in '{spec}' have different numbers of channels: {sorted(n_channels)}.")
    return cases


# ---------------------------------------------------------------- groups and split

def acquisition_group(image: sitk.Image) -> str:
    """Acquisition group from in-plane size and intensity range (PROMISE12 has no site labels).

    Why: PROMISE12 centres differ by matrix size (256, 192, 160, 128) and scanner intensity range
    (12-bit 4095-max scanners vs low-max ones); "<nx>x<ny>-hi" when the max is >= 3000, else "-lo".
    """
    array = sitk.GetArrayViewFromImage(image)
    nx, ny = image.GetSize()[:2]
    return f"{nx}x{ny}-{'hi' if float(array.max()) >= 3000 else 'lo'}"


def assign_groups(cases: list[Case]) -> list[Case]:
    """Fill in missing groups from the first channel (reads image headers + voxels)."""
    for case in cases:
        if not case.group:
            case.group = acquisition_group(read_image(case.images[0]))
    return cases


def stratified_split(cases: list[Case], val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Case], list[Case]]:
    """Case-level split, stratified by group; every group keeps at least one training case.

    Groups with one case go entirely to training; others give round(n * fraction) cases
    (at least 1, at most n - 1) to validation.
    """
    rng = np.random.default_rng(seed)
    by_group = defaultdict(list)
    for case in cases:
        by_group[case.group or "all"].append(case)
    train, val = [], []
    for group in sorted(by_group):
        members = sorted(by_group[group], key=lambda c: c.name)
        order = rng.permutation(len(members))
        n_val = 0 if len(members) < 2 or val_fraction <= 0 else min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val += [members[i] for i in order[:n_val]]
        train += [members[i] for i in order[n_val:]]
    return sorted(train, key=lambda c: c.name), sorted(val, key=lambda c: c.name)


# ---------------------------------------------------------------- nominal spacing

# A typical adult gland's bounding box, mm: in-plane size sqrt(LR x AP) and cranio-caudal extent.
GLAND_REFERENCE_MM = (48.0, 48.0)


def gland_extent_voxels(label: sitk.Image) -> tuple[float, float]:
    """(in-plane size sqrt(LR x AP), slices spanned) of a mask's bounding box, in voxels."""
    z, y, x = np.nonzero(sitk.GetArrayViewFromImage(label))
    if len(z) == 0:
        raise InputError("Cannot calibrate spacing on an empty mask.")
    inplane = math.sqrt(float(x.max() - x.min() + 1) * float(y.max() - y.min() + 1))
    return inplane, float(z.max() - z.min() + 1)


def calibrate_group_spacing(cases: list[Case], reference_mm=GLAND_REFERENCE_MM) -> dict[str, dict]:
    """Per acquisition group, the voxel size that gives the group's median gland the reference size.

    Why: PROMISE12's header spacing is nominal (1 x 1 x 3.6 mm for every centre), so glands from
    different centres appear at scales up to ~2x apart in-plane and ~1.8x in z; the real voxel size
    was discarded. The median gland of a group (same matrix, same scanner range) stands in for a
    typical gland. `cases` must be labelled and grouped (`assign_groups`); pass training cases only,
    so that validation cases get their group's spacing without their own masks being used.
    """
    extents = defaultdict(list)
    for case in cases:
        extents[case.group or "all"].append(gland_extent_voxels(read_image(case.label)))
    table = {}
    for group, values in sorted(extents.items()):
        inplane = float(np.median([v[0] for v in values]))
        slices = float(np.median([v[1] for v in values]))
        s_xy, s_z = reference_mm[0] / inplane, reference_mm[1] / slices
        table[group] = {"spacing": [round(s_xy, 3), round(s_xy, 3), round(s_z, 3)], "cases": len(values),
                        "median_extent_voxels": [round(inplane, 1), slices]}
    return table


def calibrated_dataset(cases: list[Case], table: dict[str, dict]) -> list[dict]:
    """JSON dataset entries (`_from_json` format) with each case's group spacing (none if the
    group was not calibrated: its header spacing stays)."""
    entries = []
    for case in cases:
        entry = {"name": case.name, "image": case.images, "label": case.label, "group": case.group}
        if case.group in table:
            entry["spacing"] = table[case.group]["spacing"]
        entries.append(entry)
    return entries


# ---------------------------------------------------------------- preprocessing

def remap_labels(label: sitk.Image, label_map: dict | None) -> sitk.Image:
    """Label values renamed with {old: new} (e.g. zones {1: 0, 2: 1} keeps only TZ); others kept."""
    if not label_map:
        return label
    array = sitk.GetArrayFromImage(label)
    out = array.copy()
    for old, new in label_map.items():
        out[array == int(old)] = int(new)
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(label)
    return image


def with_spacing(image: sitk.Image, spacing) -> sitk.Image:
    """`image` with its voxel size replaced (a copy; `spacing` None returns it unchanged)."""
    if spacing is None:
        return image
    image = sitk.Image(image)
    image.SetSpacing(tuple(float(v) for v in spacing))
    return image


def prepare_case(case: Case, spacing=preprocess.WORKING_SPACING, max_foreground: int = 20000, seed: int = 0,
                 channel_names=None, label_map: dict | None = None) -> PreparedCase:
    raw = [read_image(path) for path in case.images]
    label = with_spacing(remap_labels(read_label(case, raw[0]), label_map), case.spacing)
    channels = [with_spacing(image, case.spacing) for image in raw]
    label = require_same_grid(channels[0], label, (f"image of case {case.name}", f"label of case {case.name}"))
    image, working = preprocess.to_working_image(channels, spacing, channel_names)
    label_w = preprocess.label_to_working(label, working)
    fg = np.argwhere(label_w > 0).astype(np.int32)
    if len(fg) > max_foreground:  # a subsample is enough to draw patch centres from
        fg = fg[np.random.default_rng(seed).choice(len(fg), max_foreground, replace=False)]
    return PreparedCase(case.name, case.group or "all", image, label_w, fg, working, sitk.Cast(label, sitk.sitkUInt8))


# ---------------------------------------------------------------- augmentation + sampling

@dataclass
class AugmentConfig:
    """Patch augmentation; each transform has its own probability. The defaults are the "standard"
    profile; `AUGMENT_PROFILES["bigaug"]` adds the stacked transforms of BigAug (Zhang et al., IEEE TMI
    2020): voxel-size jitter, elastic deformation, bias field, contrast, Rician noise, blur,
    slice-thickness simulation and sharpening, which are off (probability 0) in the standard profile."""

    rotation_deg: float = 15.0  # in-plane rotation range (+/-)
    p_rotation: float = 0.5
    scale: tuple[float, float] = (0.75, 1.35)  # in-plane zoom range (PROMISE12 spacing is nominal)
    p_scale: float = 0.6
    flip_probs: tuple[float, float, float] = (0.5, 0.0, 0.5)  # (z, y, x): A-P anatomy is consistent; L-R and slice order are not
    p_intensity_scale: float = 0.5
    intensity_scale: tuple[float, float] = (0.75, 1.25)
    p_shift: float = 0.3
    shift: float = 0.1
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.15
    noise_std: float = 0.1
    p_channel_drop: float = 0.2  # multi-channel input only: zero one channel (missing sequences)
    # --- BigAug transforms (off in the standard profile)
    p_anisotropy: float = 0.0  # x and y zoomed by different factors (voxel sizes are estimates)
    anisotropy: tuple[float, float] = (0.87, 1.15)  # extra factor of x relative to y
    p_z_scale: float = 0.0  # slice spacing jitter: slices resampled (linear) at this zoom
    z_scale: tuple[float, float] = (0.8, 1.25)
    p_elastic: float = 0.0  # smooth in-plane displacement field
    elastic_voxels: float = 2.5  # std of the control-point displacements (working voxels, 1.5 mm)
    elastic_points: int = 5  # control points per in-plane axis
    p_bias: float = 0.0  # smooth multiplicative field exp(N(0, bias_strength)) on a coarse grid
    bias_strength: float = 0.3
    p_contrast: float = 0.0  # (I - mean) * c + mean
    contrast: tuple[float, float] = (0.7, 1.4)
    p_rician: float = 0.0  # magnitude of a complex signal with Gaussian noise in both parts
    rician_std: float = 0.06
    p_blur: float = 0.0  # in-plane Gaussian blur
    blur_sigma: tuple[float, float] = (0.5, 1.2)  # working voxels
    p_slice_thickness: float = 0.0  # thicker slices: Gaussian smoothing across slices
    slice_sigma: tuple[float, float] = (0.4, 0.9)  # slices
    p_sharpen: float = 0.0  # unsharp mask I + a (I - blur(I))
    sharpen: tuple[float, float] = (0.3, 1.0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


AUGMENT_PROFILES = {
    "standard": {},
    "bigaug": {"rotation_deg": 20.0, "scale": (0.75, 1.25), "p_anisotropy": 0.3, "p_z_scale": 0.3, "p_elastic": 0.3,
               "p_bias": 0.4, "p_contrast": 0.3, "p_rician": 0.15, "p_blur": 0.2, "p_slice_thickness": 0.2,
               "p_sharpen": 0.2},
}


def augment_profile(name: str) -> dict:
    """AugmentConfig overrides of a named profile ("standard" or "bigaug")."""
    if name not in AUGMENT_PROFILES:
        raise InputError(f"Unknown augmentation profile '{name}' (known: {', '.join(AUGMENT_PROFILES)}).")
    return {k: list(v) if isinstance(v, tuple) else v for k, v in AUGMENT_PROFILES[name].items()}


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def smooth_axis(volume: torch.Tensor, sigma: float, axis: int) -> torch.Tensor:
    """Gaussian smoothing of a (Z, Y, X) tensor along one axis, edges replicated (no dark border)."""
    kernel = _gaussian_kernel(sigma)
    moved = volume.movedim(axis, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    pad = len(kernel) // 2
    flat = F.conv1d(F.pad(flat, (pad, pad), mode="replicate"), kernel.view(1, 1, -1))
    return flat.reshape(shape).movedim(-1, axis)


class PatchSampler:
    """Draws augmented (image, label) patch batches from in-memory cases.

    Foreground balance: a fraction `p_foreground` of patches is centred on a random foreground
    voxel, the rest anywhere, so the model sees both the gland and the rest of the pelvis.
    Spatial augmentation is one `grid_sample` per patch: in-plane rotation/zoom never mixes
    slices (z stays on integer positions), which respects the thick-slice anisotropy.
    """

    def __init__(self, cases: list[PreparedCase], patch: tuple[int, int, int], augment: AugmentConfig | None = None,
                 p_foreground: float = 0.5, n_classes: int = 2, seed: int = 0, mask_channels=()):
        self.cases = cases
        self.mask_channels = set(mask_channels)  # mask inputs get no intensity augmentation or drop
        self.patch = tuple(patch)
        self.augment = augment or AugmentConfig()
        self.p_foreground = p_foreground
        self.n_classes = n_classes
        self.rng = np.random.default_rng(seed)
        self._tensors = [(torch.from_numpy(c.image), torch.from_numpy(c.label)) for c in cases]

    def _centre(self, case: PreparedCase) -> np.ndarray:
        if len(case.foreground) and self.rng.random() < self.p_foreground:
            return case.foreground[self.rng.integers(len(case.foreground))].astype(float)
        return np.array([self.rng.integers(0, s) for s in case.label.shape], dtype=float)

    def _grid(self, centre: np.ndarray, shape) -> torch.Tensor:
        """In-plane sampling grid (1, py, px, 2) in grid_sample's normalised (x, y) coordinates."""
        aug, rng = self.augment, self.rng
        _, py, px = self.patch
        angle = math.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg)) if rng.random() < aug.p_rotation else 0.0
        zoom = rng.uniform(*aug.scale) if rng.random() < aug.p_scale else 1.0
        ratio = math.sqrt(rng.uniform(*aug.anisotropy)) if rng.random() < aug.p_anisotropy else 1.0
        zoom_y, zoom_x = zoom / ratio, zoom * ratio  # zoom > 1 enlarges the anatomy
        # Integer offsets: without rotation/zoom an integer centre samples exact voxels (no blur).
        y = torch.arange(py, dtype=torch.float32) - py // 2
        x = torch.arange(px, dtype=torch.float32) - px // 2
        gy, gx = torch.meshgrid(y, x, indexing="ij")
        if rng.random() < aug.p_elastic:
            gy, gx = gy + self._displacement((py, px)), gx + self._displacement((py, px))
        cos, sin = math.cos(angle), math.sin(angle)
        sy = centre[1] + cos * gy / zoom_y - sin * gx / zoom_x
        sx = centre[2] + sin * gy / zoom_y + cos * gx / zoom_x
        return torch.stack([2 * sx / max(shape[2] - 1, 1) - 1, 2 * sy / max(shape[1] - 1, 1) - 1], dim=-1)[None]

    def _displacement(self, size) -> torch.Tensor:
        """A smooth random displacement (voxels): Gaussian control points, bicubic in between."""
        n = max(2, self.augment.elastic_points)
        points = torch.from_numpy(self.rng.normal(0, self.augment.elastic_voxels, (1, 1, n, n)).astype(np.float32))
        return F.interpolate(points, size=size, mode="bicubic", align_corners=True)[0, 0]

    def _slice_positions(self, centre_z: float) -> np.ndarray:
        """The patch's slice positions: whole slices around the centre, or (z-scale jitter) fractional
        positions spaced 1/zoom apart, which thins or thickens the anatomy across slices."""
        pz = self.patch[0]
        offsets = np.arange(pz) - pz // 2
        if self.rng.random() < self.augment.p_z_scale:
            return round(centre_z) + offsets / self.rng.uniform(*self.augment.z_scale)
        return (offsets + int(round(centre_z))).astype(float)

    def _slab(self, image: torch.Tensor, label: torch.Tensor, centre_z: float):
        """The patch's slices (zeros / background outside the volume): whole slices, or slices linearly
        interpolated at fractional positions (labels: nearest slice).

        Why slices + 2D grid_sample: z is interpolated only when the z-scale jitter asks for it, and
        PyTorch's 2D sampler is ~25x faster on CPU than the 3D one.
        """
        z = self._slice_positions(centre_z)
        nz = label.shape[0]
        img = torch.zeros((len(z), image.shape[0]) + tuple(image.shape[2:]))
        lab = torch.zeros((len(z),) + tuple(label.shape[1:]), dtype=label.dtype)
        nearest = np.round(z).astype(int)
        valid = (nearest >= 0) & (nearest < nz)
        lab[torch.from_numpy(valid)] = label[nearest[valid]]
        low = np.floor(z).astype(int)
        weight = z - low
        for lo, w, k in ((low, 1 - weight, 0), (low + 1, weight, 1)):
            inside = (lo >= 0) & (lo < nz) & (w > 1e-6)
            if inside.any():
                w_t = torch.from_numpy(w[inside].astype(np.float32)).view(-1, 1, 1, 1)
                img[torch.from_numpy(inside)] += w_t * image[:, lo[inside]].permute(1, 0, 2, 3)
        return img, lab

    def _flip(self, image: torch.Tensor, label: torch.Tensor):
        for axis, p in enumerate(self.augment.flip_probs):
            if p > 0 and self.rng.random() < p:
                image = torch.flip(image, [axis + 1])
                label = torch.flip(label, [axis])
        return image, label

    def _intensity(self, image: torch.Tensor) -> torch.Tensor:
        aug, rng = self.augment, self.rng
        for c in range(image.shape[0]):
            if c in self.mask_channels:
                continue
            channel = image[c]
            if rng.random() < aug.p_bias:
                channel = channel * self._bias_field(channel.shape)
            if rng.random() < aug.p_gamma:
                lo, hi = float(channel.min()), float(channel.max())
                if hi > lo:
                    channel = ((channel - lo) / (hi - lo)) ** rng.uniform(*aug.gamma) * (hi - lo) + lo
            if rng.random() < aug.p_contrast:
                mean = channel.mean()
                channel = (channel - mean) * rng.uniform(*aug.contrast) + mean
            if rng.random() < aug.p_intensity_scale:
                channel = channel * rng.uniform(*aug.intensity_scale)
            if rng.random() < aug.p_shift:
                channel = channel + rng.uniform(-aug.shift, aug.shift)
            channel = self._resolution(channel)
            if rng.random() < aug.p_noise:
                channel = channel + torch.randn_like(channel) * rng.uniform(0, aug.noise_std)
            if rng.random() < aug.p_rician:
                std = rng.uniform(0, aug.rician_std)
                channel = torch.sqrt((channel + torch.randn_like(channel) * std) ** 2 + (torch.randn_like(channel) * std) ** 2)
            image[c] = channel
        droppable = [c for c in range(1, image.shape[0]) if c not in self.mask_channels]  # never the T2
        if droppable and rng.random() < aug.p_channel_drop:
            image[droppable[rng.integers(len(droppable))]] = 0.0
        return image

    def _bias_field(self, shape) -> torch.Tensor:
        """exp of a smooth random field (2 x 3 x 3 control values, trilinear): a coil-shading pattern."""
        coarse = self.rng.normal(0, self.augment.bias_strength, (1, 1, 2, 3, 3)).astype(np.float32)
        return torch.exp(F.interpolate(torch.from_numpy(coarse), size=tuple(shape), mode="trilinear", align_corners=True)[0, 0])

    def _resolution(self, channel: torch.Tensor) -> torch.Tensor:
        """Blur in-plane, thicker slices (smoothing across slices) and sharpening, each by chance."""
        aug, rng = self.augment, self.rng
        if rng.random() < aug.p_blur:
            sigma = rng.uniform(*aug.blur_sigma)
            channel = smooth_axis(smooth_axis(channel, sigma, 1), sigma, 2)
        if rng.random() < aug.p_slice_thickness and channel.shape[0] > 1:
            channel = smooth_axis(channel, rng.uniform(*aug.slice_sigma), 0)
        if rng.random() < aug.p_sharpen:
            blurred = smooth_axis(smooth_axis(channel, 1.0, 1), 1.0, 2)
            channel = channel + rng.uniform(*aug.sharpen) * (channel - blurred)
        return channel

    def sample(self, index: int | None = None, centre=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One augmented (image (C, pz, py, px), label (pz, py, px)) patch; random case and centre
        unless given (centre = (z, y, x) voxel at patch index (pz//2, py//2, px//2))."""
        index = int(self.rng.integers(len(self.cases))) if index is None else index
        case = self.cases[index]
        image, label = self._tensors[index]
        centre = self._centre(case) if centre is None else np.asarray(centre, dtype=float)
        grid = self._grid(centre, case.label.shape).expand(self.patch[0], -1, -1, -1)
        img, lab = self._slab(image, label, centre[0])
        patch = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True).permute(1, 0, 2, 3)
        # Label interpolation: linear on one-hot then argmax; outside the volume = background.
        onehot = torch.stack([(lab == k).float() for k in range(self.n_classes)], dim=1)
        onehot[:, 0] += 1e-4
        lab = F.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros", align_corners=True).argmax(1)
        patch, lab = self._flip(patch, lab)
        return self._intensity(patch.contiguous()), lab.contiguous()

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.sample() for _ in range(size)]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# ---------------------------------------------------------------- lesion layout (PI-CAI / nnU-Net)

# Channel names of the lesion layout, in file order _0000.._0004: the zones are '*_mask' channels
# (preprocess.is_mask_channel), so they are resampled linearly and kept in [0, 1], never normalised.
LESION_CHANNELS = ("T2", "ADC", "HBV", "PZ_mask", "TZ_mask")
_SEQUENCES = ("t2w", "adc", "hbv")


def _sequence_path(case: Path, sequence: str) -> Path:
    """A case folder's sequence: a DICOM folder `<seq>/` or a file `<seq>.nii.gz` / `.nii` / `.mha`."""
    candidates = [case / sequence] + [case / f"{sequence}{ext}" for ext in (".nii.gz", ".nii", ".mha", ".nrrd")]
    for path in candidates:
        if path.exists():
            return path
    raise InputError(f"Case '{case}' has no {sequence} (expected {sequence}/ or {sequence}.nii.gz).")


def _on_grid(mask: sitk.Image, t2: sitk.Image) -> sitk.Image:
    """A mask as uint8 on the T2 grid (nearest neighbour when it is stored on another grid)."""
    from ProstateAICore.geometry import same_grid

    mask = sitk.Cast(mask, sitk.sitkUInt8)
    if same_grid(mask, t2):
        return mask
    return sitk.Resample(mask, t2, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)


def write_picai_layout(cases, out, zones: bool | None = None) -> list[Path]:
    """Write case folders (ProstateX-style `t2w/ adc/ hbv/` DICOM folders or PI-CAI-style
    `t2w.nii.gz ...`, each with `masks/lesions.nii.gz` (ISUP values) and optionally
    `masks/zones.nii.gz` (1 PZ, 2 TZ)) as the PI-CAI / nnU-Net training layout under `out`:
    `imagesTr/<case>_0000` T2, `_0001` ADC, `_0002` HBV (each on its own grid), `_0003` PZ and `_0004` TZ
    masks (on the T2 grid; written when every case has zones, or `zones=True`), `labelsTr/<case>`
    the lesion mask on the T2 grid, all NIfTI. Returns the written paths."""
    from ProstateAICore.imageio import write_all

    cases = [Path(c) for c in cases]
    if not cases:
        raise InputError("No cases given for the lesion layout.")
    if zones is None:
        zones = all((c / "masks" / "zones.nii.gz").is_file() for c in cases)
    out = Path(out)
    outputs = []
    for case in cases:
        name = case.name
        lesions = case / "masks" / "lesions.nii.gz"
        if not lesions.is_file():
            raise InputError(f"Case '{case}' has no masks/lesions.nii.gz (write an empty mask for a negative case).")
        t2 = read_image(_sequence_path(case, "t2w"))
        images = [t2] + [read_image(_sequence_path(case, s)) for s in _SEQUENCES[1:]]
        if zones:
            zone_map = sitk.GetArrayFromImage(_on_grid(read_image(case / "masks" / "zones.nii.gz"), t2))
            for value in (1, 2):  # PZ, TZ
                mask = sitk.GetImageFromArray((zone_map == value).astype(np.uint8))
                mask.CopyInformation(t2)
                images.append(mask)
        outputs += [(image, out / "imagesTr" / f"{name}_{index:04d}.nii.gz") for index, image in enumerate(images)]
        outputs.append((_on_grid(read_image(lesions), t2), out / "labelsTr" / f"{name}.nii.gz"))
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    return write_all(outputs)
