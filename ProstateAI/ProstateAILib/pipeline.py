"""`prostateai segment`: T2 (+ ADC, HBV) -> prostate, zones, probabilities, seg.nrrd, report.

Cascade (Pellicer-Valero 2022): model 1 segments the whole gland from T2; model 2 takes T2 + the
gland mask and segments the transition zone (TZ, "central gland"); PZ = gland - TZ.

Everything is written on the T2's exact grid. ADC/HBV given on other grids are checked for
overlap with the T2 and resampled onto it (third-order B-spline); the shipped models read T2
only, so they are recorded in the report (and available to models that list them as channels).
Outputs are written to a hidden staging folder next to OUT and moved into place only when every
file is complete, so a failure never leaves a partial result.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ProstateAICore import __version__
from ProstateAICore.errors import InputError
from ProstateAICore.geometry import image_like
from ProstateAICore.imageio import read_image_with_source, staged_folder, validate_volume, write_image_file
from ProstateAICore.progress import ProgressFn, scaled

from . import models, preprocess, quality

MIN_PROSTATE_ML = 1.0  # a smaller largest component is noise, not a gland

# name, output map, label value, colour (RGB 0-1), SNOMED CT code and meaning (DICOM SEG / terminology)
SEGMENTS = (
    ("Prostate", "prostate", 1, (0.85, 0.66, 0.47), ("41216001", "Prostate")),
    ("PZ", "zones", 1, (0.30, 0.69, 0.29), ("279706003", "Peripheral zone of the prostate")),
    ("TZ", "zones", 2, (0.22, 0.49, 0.72), ("399384005", "Transition zone of the prostate")),
)
# Lesion candidates (lesions.py) become segments "Lesion 1", "Lesion 2", ... (label value = id, layer
# "lesions"): SNOMED CT type Lesion, category Morphologically abnormal structure, region Prostate (export.py).
LESION_SEGMENT = ("Lesion", "lesions", (0.90, 0.16, 0.16), ("52988006", "Lesion"))
LESIONS_SKIPPED = "lesions skipped: needs --adc and --hbv"


class NoProstateFound(InputError):
    """The gland model found no prostate in the T2 (wrong anatomy, wrong sequence, empty field of view)."""


@dataclass
class Inputs:
    t2: sitk.Image
    extra: dict[str, sitk.Image] = field(default_factory=dict)  # "ADC"/"HBV" on the T2 grid
    sources: dict[str, dict] = field(default_factory=dict)


@dataclass
class Result:
    prostate: sitk.Image  # uint8, 1 = prostate, T2 grid
    zones: sitk.Image  # uint8, 1 = PZ, 2 = TZ, T2 grid
    probabilities: dict[str, sitk.Image]  # float32 on the T2 grid
    report: dict
    detection_map: sitk.Image | None = None  # float32, each lesion candidate filled with its score (lesions.py)
    lesion_labels: sitk.Image | None = None  # uint8 candidate ids 1..N, T2 grid
    lesions: dict | None = None  # lesions.json (lesions.lesion_table)


# ---------------------------------------------------------------- inputs

def overlap_fraction(moving: sitk.Image, fixed: sitk.Image, samples: int = 12) -> float:
    """Fraction of a regular sample of the fixed image's voxel centres that fall inside `moving`."""
    axes = [np.linspace(0, s - 1, min(s, samples)) for s in fixed.GetSize()]
    inside = total = 0
    upper = np.array(moving.GetSize()) - 0.5
    for i in axes[0]:
        for j in axes[1]:
            for k in axes[2]:
                point = fixed.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
                index = np.array(moving.TransformPhysicalPointToContinuousIndex(point))
                inside += bool(np.all(index >= -0.5) and np.all(index <= upper))
                total += 1
    return inside / max(total, 1)


def _read(path, name: str, allow_irregular: bool = False, shown: str | None = None) -> tuple[sitk.Image, dict]:
    """Read one input; `shown` names it in messages instead of `path` (a study's series read from a
    temporary folder of links, see study.series_folders; the report keeps the folder read)."""
    if path is None or str(path) == "":
        raise InputError(f"No {name} given.")
    label = shown or str(path)
    if not Path(path).exists():
        raise InputError(f"The {name} '{label}' does not exist (missing sequence?).")
    try:
        image, source = read_image_with_source(path, allow_irregular=allow_irregular)
    except InputError as exc:
        if shown is None:
            raise
        raise InputError(str(exc).replace(str(path), shown)) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {name} '{label}' has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar MR volume is needed.")
    validate_volume(image, name)
    if source.modality and source.modality.upper() not in ("MR", "OT"):
        raise InputError(f"The {name} '{label}' is a {source.modality} series, not MR.")
    info = {"path": str(path), "kind": source.kind, "size": list(image.GetSize()),
            "spacing_mm": [round(s, 6) for s in image.GetSpacing()]}
    if source.series_description:
        info["series_description"] = source.series_description
    if source.notes:
        info["notes"] = list(source.notes)
    return image, info


def prepare_inputs(t2: sitk.Image, extra: dict[str, sitk.Image | None] | None = None) -> Inputs:
    """Validated inputs: every extra sequence must overlap the T2 and is resampled onto its grid."""
    validate_volume(t2, "T2")
    inputs = Inputs(sitk.Cast(t2, sitk.sitkFloat32))
    for name, image in (extra or {}).items():
        if image is None:
            continue
        validate_volume(image, name)
        fraction = overlap_fraction(image, t2)
        if fraction < 0.05:
            raise InputError(f"The {name} does not overlap the T2 ({fraction:.0%} of the T2 field of view is "
                             f"inside it): is it from the same patient and study?")
        inputs.extra[name] = preprocess.resample_like(sitk.Cast(image, sitk.sitkFloat32), t2, "bspline")
    return inputs


def read_inputs(t2_path, adc_path=None, hbv_path=None, allow_irregular: bool = False,
                shown: dict[str, str] | None = None) -> Inputs:
    """Read T2 (+ ADC, HBV) from DICOM folders or image files and prepare them (`shown`: names by
    role for messages and the report, see `_read`)."""
    shown = shown or {}
    t2, t2_info = _read(t2_path, "T2", allow_irregular, shown.get("T2"))
    extra, infos = {}, {"T2": t2_info}
    for name, path in (("ADC", adc_path), ("HBV", hbv_path)):
        if path is not None:
            extra[name], infos[name] = _read(path, name, allow_irregular, shown.get(name))
    inputs = prepare_inputs(t2, extra)
    inputs.sources = infos
    return inputs


# ---------------------------------------------------------------- models

def _channels_for(metadata: dict, inputs: Inputs, gland: np.ndarray | None = None) -> list[sitk.Image]:
    """The model's input channels, by name, from the prepared inputs (missing sequence -> error)."""
    channels = []
    for name in metadata.get("channels", ["T2"]):
        if name == "T2":
            channels.append(inputs.t2)
        elif preprocess.is_mask_channel(name):
            if gland is None:
                raise InputError(f"Model '{metadata.get('name')}' needs a gland mask input.")
            channels.append(image_like(gland, inputs.t2, np.float32))
        elif name.upper() in inputs.extra:
            channels.append(inputs.extra[name.upper()])
        else:
            raise InputError(f"Model '{metadata.get('name')}' needs the {name} sequence; give it with --{name.lower()}.")
    return channels


def canonical_inputs(inputs: Inputs) -> Inputs:
    """Inputs with voxel axes permuted/flipped to the closest LPS order (lossless, see preprocess)."""
    return Inputs(preprocess.canonical_orientation(inputs.t2),
                  {k: preprocess.canonical_orientation(v) for k, v in inputs.extra.items()}, inputs.sources)


def _to_input_axes(image: sitk.Image, original: sitk.Image) -> sitk.Image:
    """Undo `canonical_inputs` exactly: back to the original voxel order and geometry."""
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(original.GetDirection())
    out = sitk.DICOMOrient(image, code)
    if out.GetSize() != original.GetSize():
        raise RuntimeError("internal error: could not restore the T2 axis order")
    out.CopyInformation(original)  # removes float round-off from the permutation
    return out


ROI_MARGIN_MM = (20.0, 20.0, 7.5)  # x, y, z context around the gland for the zone model


def gland_roi(mask: np.ndarray, image: sitk.Image, margin_mm=ROI_MARGIN_MM) -> tuple[slice, slice, slice]:
    """(z, y, x) slices of the gland's bounding box grown by `margin_mm`, clipped to the image."""
    idx = np.argwhere(mask)
    margin = [int(np.ceil(m / s)) for m, s in zip(margin_mm, image.GetSpacing())][::-1]  # (z, y, x)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _crop(image: sitk.Image, roi) -> sitk.Image:
    index = [r.start for r in roi][::-1]
    size = [r.stop - r.start for r in roi][::-1]
    return sitk.RegionOfInterest(image, size, index)


def voxel_ml(image: sitk.Image) -> float:
    return float(np.prod(image.GetSpacing())) / 1000.0


def segment(inputs: Inputs, gland_model: str | None = None, zones_model: str | None = None, device: str = "auto",
            tta: bool = True, progress: ProgressFn | None = None, threads: int | None = None,
            lesions: bool = True, localiser: str | None = "auto") -> Result:
    """Run the cascade on prepared inputs (and, with ADC and HBV, the lesion detector unless `lesions`
    is False). Raises NoProstateFound when the gland is absent.

    `localiser`: "auto" = the catalog's "localise" model when it has one, a catalog name or .pt file,
    or None (the gland model runs over the whole volume)."""
    dev = models.pick_device(device)
    # torch only when it runs the networks or is loaded already: importing it costs ~2 s of a new
    # process; ONNX Runtime gets the thread count through models.load.
    torch = None
    if "torch" in sys.modules or models.runs_on_torch(dev):
        import torch
    previous_threads = torch.get_num_threads() if torch is not None else None
    if threads and torch is not None:
        torch.set_num_threads(threads)
    try:
        return _segment(inputs, gland_model, zones_model, dev, tta, progress, lesions, localiser, threads)
    finally:
        if torch is not None:
            torch.set_num_threads(previous_threads)  # in Slicer the process (and torch) is shared


def _localiser_name(localiser: str | None, catalog) -> str | None:
    if localiser != "auto":
        return localiser
    catalog = models.load_catalog() if catalog is None else catalog
    try:
        return models.default_model("localise", catalog)
    except InputError:  # a catalog without a localiser: the gland model runs over the whole volume
        return None


def _segment(inputs: Inputs, gland_model, zones_model, dev, tta: bool, progress, lesions: bool = True,
             localiser: str | None = "auto", threads: int | None = None) -> Result:
    from .inference import predict_probabilities
    from .postprocess import foreground_mask

    original_t2 = inputs.t2
    quality.require_mr_magnitude(sitk.GetArrayViewFromImage(original_t2))  # before minutes of work on a CT
    inputs = canonical_inputs(inputs)  # every step below sees the same axes whatever the storage order
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    catalog = None
    if gland_model is None or zones_model is None:
        catalog = models.load_catalog()
    gland_name = gland_model or models.default_model("gland", catalog)
    zones_name = zones_model or models.default_model("zones", catalog)
    net1, meta1 = models.load(gland_name, device=dev, catalog=catalog, threads=threads)
    net2, meta2 = models.load(zones_name, device=dev, catalog=catalog, threads=threads)
    localiser_name = _localiser_name(localiser, catalog)
    located = models.load(localiser_name, device=dev, catalog=catalog, threads=threads) if localiser_name else None
    timings["load_models"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    localisation = {}
    p_gland = predict_probabilities(net1, meta1, _channels_for(meta1, inputs), device=dev, tta=tta,
                                    progress=scaled(progress, 0.0, 0.6), localiser=located, info=localisation)[1]
    threshold1 = float(meta1.get("inference", {}).get("threshold", 0.5))
    prostate = foreground_mask(p_gland, threshold1)
    timings["gland"] = time.perf_counter() - t0
    volume = float(prostate.sum()) * voxel_ml(inputs.t2)
    if volume < MIN_PROSTATE_ML:
        raise NoProstateFound(
            f"No prostate found in the T2 image (largest candidate {volume:.2f} mL < {MIN_PROSTATE_ML} mL). "
            "Check that it is an axial T2-weighted MRI of the pelvis covering the prostate.")

    t0 = time.perf_counter()
    # The zone model only matters inside the gland: run it on the gland's box plus context.
    roi = gland_roi(prostate, inputs.t2)
    cropped = Inputs(_crop(inputs.t2, roi), {k: _crop(v, roi) for k, v in inputs.extra.items()})
    p_tz = np.zeros(prostate.shape, np.float32)
    p_tz[roi] = predict_probabilities(net2, meta2, _channels_for(meta2, cropped, prostate[roi]), device=dev,
                                      tta=tta, progress=scaled(progress, 0.6, 0.95))[1]
    threshold2 = float(meta2.get("inference", {}).get("threshold", 0.5))
    tz = foreground_mask(p_tz, threshold2, within=prostate)
    zones = np.where(prostate, np.where(tz, 2, 1), 0).astype(np.uint8)
    timings["zones"] = time.perf_counter() - t0

    detection = None  # csPCa lesion candidates (lesions.py) when ADC and HBV are there
    if lesions and {"ADC", "HBV"} <= set(inputs.extra):
        from . import lesions as detector

        t0 = time.perf_counter()
        array = sitk.GetArrayViewFromImage
        detection = detector.detect(array(inputs.t2), array(inputs.extra["ADC"]), array(inputs.extra["HBV"]),
                                    zones, inputs.t2.GetSpacing(), prostate)
        timings["lesions"] = time.perf_counter() - t0

    ml = voxel_ml(inputs.t2)
    back = lambda array, dtype: _to_input_axes(image_like(array, inputs.t2, dtype), original_t2)  # noqa: E731
    report = {
        "program": {"name": "ProstateAI", "version": __version__},
        "models": {
            "gland": _model_info(meta1, threshold1),
            "zones": _model_info(meta2, threshold2),
            **({"localiser": _model_info(located[1], 0.5)} if located else {}),
        },
        "device": str(dev),
        "test_time_augmentation": bool(tta),
        "localisation": localisation or {"status": "off", "note": "the gland model ran over the whole volume"},
        "volumes_ml": {"prostate": round(volume, 3), "PZ": round(float((zones == 1).sum()) * ml, 3),
                       "TZ": round(float((zones == 2).sum()) * ml, 3)},
        "t2_geometry": {"size": list(original_t2.GetSize()), "spacing_mm": list(original_t2.GetSpacing()),
                        "origin_mm": list(original_t2.GetOrigin()), "direction": list(original_t2.GetDirection())},
        "inputs": inputs.sources,
        "extra_sequences_resampled_to_t2": sorted(inputs.extra),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    t2_source = (inputs.sources or {}).get("T2") or {}
    report["quality"] = quality.verdict(
        quality.input_metrics(sitk.GetArrayViewFromImage(inputs.t2), t2_source.get("series_description")),
        quality.prediction_metrics(prostate, int(np.count_nonzero(p_gland >= threshold1)), p_gland, ml))
    used = {c.upper() for c in meta1.get("channels", []) + meta2.get("channels", [])}
    unused = sorted(set(inputs.extra) - used - ({"ADC", "HBV"} if detection is not None else set()))
    if unused:
        report["notes"] = [f"{', '.join(unused)} checked and resampled onto the T2 but not used by these models."]
    table = None
    if detection is not None:
        from . import lesions as detector

        table = detector.lesion_table(detection, inputs.t2)  # physical centroids: any axis order gives the same
        report["lesions"] = {"status": "detected", "detector": table["detector"], "patient_score": table["patient_score"],
                             "candidates": len(table["lesions"]),
                             "operating_points": table["operating_points"], "file": "lesions.json"}
    elif lesions:
        report["lesions"] = {"status": "skipped", "reason": LESIONS_SKIPPED}
        report.setdefault("notes", []).append(LESIONS_SKIPPED)
    else:
        report["lesions"] = {"status": "not run", "reason": "--no-lesions"}
    probabilities = {  # values below 1e-3 are set to 0: smaller files, no visible difference
        "prostate": back(_clean(p_gland), np.float32),
        "TZ": back(_clean(p_tz * prostate), np.float32),
        "PZ": back(_clean(p_gland * (1.0 - p_tz)), np.float32),
    }
    if progress is not None:
        progress(1.0, "segmentation done")
    result = Result(back(prostate, np.uint8), back(zones, np.uint8), probabilities, report)
    if detection is not None:
        result.detection_map = back(detection.detection_map, np.float32)
        result.lesion_labels = back(detection.labels, np.uint8)
        result.lesions = table
    return result


def _clean(probability: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    return np.where(probability >= floor, probability, 0.0).astype(np.float32)


def _model_info(metadata: dict, threshold: float) -> dict:
    validation = metadata.get("validation", {})
    return {"name": metadata.get("name"), "version": metadata.get("catalog_version"),
            "task": metadata.get("task"), "channels": metadata.get("channels"), "threshold": threshold,
            "backend": metadata.get("backend", "torch"),
            "validation_dice": validation.get("deployment", {}).get("mean_dice", validation.get("mean_dice"))}


# ---------------------------------------------------------------- outputs

def label_layers(result: Result) -> dict[str, sitk.Image]:
    layers = {"prostate": result.prostate, "zones": result.zones}
    if result.lesion_labels is not None:
        layers[LESION_SEGMENT[1]] = result.lesion_labels
    return layers


def lesion_segments(result: Result) -> list:
    """segfile.Segments "Lesion <id>" of the result's lesion candidates (none without detection)."""
    from . import segfile

    if result.lesion_labels is None or not result.lesions:
        return []
    name, _, colour, code = LESION_SEGMENT
    return [segfile.Segment(f"{name} {entry['id']}", result.lesion_labels, int(entry["id"]), colour, code)
            for entry in sorted(result.lesions["lesions"], key=lambda e: e["id"])]


def write_outputs(result: Result, out: str | os.PathLike, write_seg=True, started: float | None = None) -> Path:
    """Write every output into a staging folder that then replaces OUT as a whole (imageio.staged_folder).

    With lesion candidates (result.detection_map): detection_map.nii.gz, lesions.nii.gz and lesions.json,
    and the candidates as segments "Lesion <id>" in the segmentation files.

    With `write_seg`: segmentation.seg.nrrd, and segmentation.dcm (DICOM SEG, see export.py) when the T2
    was read from a DICOM series (report["inputs"]["T2"]); when the SEG cannot reference that series
    (e.g. a T2 resampled with --allow-irregular) the report says why in "notes" instead.

    report.json is written last, with the time spent writing the other files and, when `started`
    (a time.perf_counter() value) is given, the total time since then.
    """
    from . import segfile

    t0 = time.perf_counter()
    out = Path(out)
    with staged_folder(out) as staging:
        (staging / "probabilities").mkdir()
        write_image_file(result.prostate, staging / "prostate.nii.gz", shown=out / "prostate.nii.gz")
        write_image_file(result.zones, staging / "zones.nii.gz", shown=out / "zones.nii.gz")
        for name, image in result.probabilities.items():
            # fast compression level: probability maps are mostly exact zeros (see `segment`)
            write_image_file(image, staging / "probabilities" / f"{name}.nii.gz",
                             shown=out / "probabilities" / f"{name}.nii.gz", level=1)
        if result.detection_map is not None:
            write_image_file(result.detection_map, staging / "detection_map.nii.gz", shown=out / "detection_map.nii.gz")
            write_image_file(result.lesion_labels, staging / "lesions.nii.gz", shown=out / "lesions.nii.gz")
            (staging / "lesions.json").write_text(json.dumps(result.lesions, indent=2))
        if write_seg:
            layers = label_layers(result)
            segments = [segfile.Segment(name, layers[layer], value, colour, code)
                        for name, layer, value, colour, code in SEGMENTS] + lesion_segments(result)
            segfile.write_seg_nrrd(segments, staging / "segmentation.seg.nrrd")
            t2_source = result.report.get("inputs", {}).get("T2", {})
            if t2_source.get("kind") == "dicom-series":  # DICOM SEG referencing the T2 series' own files
                from . import export

                try:
                    dataset = export.dicom_seg(segments, t2_source["path"], export.algorithms_from_report(result.report))
                except InputError as exc:  # e.g. a resampled (--allow-irregular) T2: the other outputs still count
                    result.report.setdefault("notes", []).append(f"segmentation.dcm not written: {exc}")
                else:
                    export.save_dicom(dataset, staging / "segmentation.dcm")
        timings = result.report.setdefault("timings_s", {})
        timings["write_outputs"] = round(time.perf_counter() - t0, 3)
        if started is not None:
            timings["total"] = round(time.perf_counter() - started, 3)
        (staging / "report.json").write_text(json.dumps(result.report, indent=2))
    return out


def run(t2, out, adc=None, hbv=None, gland_model=None, zones_model=None, device="auto", tta=True,
        progress: ProgressFn | None = None, threads: int | None = None, allow_irregular: bool = False,
        study=None, allow_mismatch: bool = False, psa: float | None = None, lesions: bool = True,
        localiser: str | None = "auto") -> dict:
    """Load -> segment -> write (the whole `prostateai segment`); returns the report.

    `study`: a DICOM study folder (or a `study.StudySelection` made from one) instead of t2/adc/hbv:
    the axial T2, the ADC and the highest-b DWI are chosen from it and the choice goes into the
    report ("study"). Inputs from different patients or studies are refused unless `allow_mismatch`.
    `psa` (ng/mL): the report gets it and the PSA density (PSA / prostate volume in mL).
    `lesions`: detect csPCa lesion candidates (lesions.py) when ADC and HBV are given (False: skip).
    """
    import contextlib

    from . import study as studies

    start = time.perf_counter()
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"Output '{out}' exists and is not a folder.")
    if psa is not None and not 0 < psa < float("inf"):  # NaN fails too
        raise InputError(f"The PSA must be a positive number of ng/mL, got {psa}.")
    t0 = time.perf_counter()
    selection = None
    with contextlib.ExitStack() as stack:  # a study's series folders live until the outputs (DICOM SEG) are written
        if study is not None:
            if any(p is not None and str(p) != "" for p in (t2, adc, hbv)):
                raise InputError("Give either a study folder or the T2 (with ADC/HBV), not both.")
            selection = study if isinstance(study, studies.StudySelection) else studies.select_series(study)
            notes = studies.check_same_patient(selection.identities(), allow_mismatch)
            folders = stack.enter_context(studies.series_folders(selection))
            shown = {role: c.shown for role, c in selection.by_role().items()
                     if c is not None and folders[role] != c.folder}  # a folder of links: named by its series
            inputs = read_inputs(folders["T2"], folders.get("ADC"), folders.get("HBV"), allow_irregular, shown)
        else:
            identities = {name: studies.identity_of_path(path)
                          for name, path in (("T2", t2), ("ADC", adc), ("HBV", hbv))}
            notes = studies.check_same_patient(identities, allow_mismatch)
            inputs = read_inputs(t2, adc, hbv, allow_irregular)
        load_s = time.perf_counter() - t0
        result = segment(inputs, gland_model, zones_model, device, tta, scaled(progress, 0.05, 0.9), threads,
                         lesions=lesions, localiser=localiser)
        result.report["timings_s"] = {"read_inputs": round(load_s, 3), **result.report["timings_s"]}
        if selection is not None:
            result.report["study"] = selection.as_report()
            result.report["study_series"] = selection.series_report()
        if notes:
            result.report["notes"] = result.report.get("notes", []) + notes
        if psa is not None:
            volume = result.report["volumes_ml"]["prostate"]
            result.report["psa_ng_ml"] = psa
            result.report["psa_density_ng_ml2"] = round(psa / volume, 3)
        write_outputs(result, out, started=start)
    if progress is not None:
        progress(1.0, f"wrote {out}")
    return result.report
