"""Dataset layouts, groups and split, patch sampling, loss, and a tiny end-to-end training run with resume."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ProstateAILib import cli, dataset, network, preprocess, train
from MRStandardizeLib.normalize import normalize
from ProstateAICore.errors import InputError

pytestmark = pytest.mark.data

SMALL = ("case13", "case25", "case38")  # 160x160x15, 128x128x18, 160x160x24: quick to preprocess


def _nnunet_layout(root, promise12_data, names=SMALL):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for name in names:
        (root / "imagesTr" / f"{name}_0000.nii.gz").symlink_to(promise12_data / f"{name}_t2.nii.gz")
        (root / "labelsTr" / f"{name}.nii.gz").symlink_to(promise12_data / f"{name}_prostate.nii.gz")
    return root


def _json_list(path, promise12_data, names=SMALL, group="g", spacings=None):
    entries = [{"image": str(promise12_data / f"{n}_t2.nii.gz"), "label": str(promise12_data / f"{n}_prostate.nii.gz"),
                "group": group, **({"spacing": spacings[n]} if spacings and n in spacings else {})} for n in names]
    path.write_text(json.dumps(entries))
    return path


def test_three_dataset_layouts(tmp_path, promise12_data):
    pairs = dataset.discover_cases(promise12_data)
    assert len(pairs) == 36 and pairs[0].name == "case00" and pairs[0].images[0].endswith("case00_t2.nii.gz")
    nnunet = dataset.discover_cases(_nnunet_layout(tmp_path / "nn", promise12_data))
    assert [c.name for c in nnunet] == list(SMALL) and all(len(c.images) == 1 for c in nnunet)
    assert all(c.label.endswith(f"{c.name}.nii.gz") for c in nnunet)
    listed = dataset.discover_cases(_json_list(tmp_path / "list.json", promise12_data))
    assert [c.name for c in listed] == list(SMALL) and {c.group for c in listed} == {"g"}
    with pytest.raises(InputError, match="No labelled cases"):
        dataset.discover_cases(tmp_path / "nn" / "labelsTr")


def test_groups_and_stratified_split(promise12_data):
    cases = dataset.assign_groups(dataset.discover_cases(promise12_data))
    groups = Counter(c.group for c in cases)
    # The README table: 256^2 high/low max, 160^2 low max, 160^2 4095-max, one 128^2, one 192^2.
    assert groups == {"160x160-lo": 11, "160x160-hi": 9, "256x256-lo": 8, "256x256-hi": 6, "128x128-lo": 1, "192x192-lo": 1}
    train_cases, val_cases = dataset.stratified_split(cases, 0.2, seed=0)
    assert len(train_cases) + len(val_cases) == 36 and not {c.name for c in train_cases} & {c.name for c in val_cases}
    assert {c.group for c in train_cases} == set(groups)  # every group keeps training cases
    assert {c.group for c in val_cases} == {g for g, n in groups.items() if n >= 2}  # and is validated when it can be
    assert 6 <= len(val_cases) <= 8
    again = dataset.stratified_split(cases, 0.2, seed=0)
    assert [c.name for c in again[1]] == [c.name for c in val_cases]  # deterministic


@pytest.fixture(scope="module")
def prepared(promise12_data):
    cases = dataset.discover_cases(promise12_data)
    return [dataset.prepare_case(c) for c in cases if c.name in SMALL]


def test_json_spacing_overrides_nominal_voxel_size(tmp_path, promise12_data):
    entry = {"image": str(promise12_data / "case13_t2.nii.gz"), "label": str(promise12_data / "case13_prostate.nii.gz"),
             "spacing": [1.3, 1.3, 3.0]}
    (tmp_path / "list.json").write_text(json.dumps({"training": [entry]}))
    case = dataset.discover_cases(tmp_path / "list.json")[0]
    assert case.spacing == (1.3, 1.3, 3.0)
    before = sitk.ReadImage(entry["image"]).GetSpacing()
    prepared = dataset.prepare_case(case)
    assert prepared.original.GetSpacing() == pytest.approx((1.3, 1.3, 3.0))
    # 160 x 160 x 15 voxels of 1.3 x 1.3 x 3.0 mm cover 208 x 208 x 45 mm -> 139 x 139 x 13 working voxels
    assert prepared.label.shape == (13, 139, 139)
    truth = sitk.GetArrayFromImage(sitk.ReadImage(entry["label"]))
    assert np.array_equal(sitk.GetArrayFromImage(prepared.original), truth)  # voxels untouched, only the size
    assert sitk.ReadImage(entry["image"]).GetSpacing() == before  # the file is not modified
    for bad in ([1.0, 1.0], [1.0, -1.0, 3.0], "thin"):
        (tmp_path / "bad.json").write_text(json.dumps([dict(entry, spacing=bad)]))
        with pytest.raises(InputError, match="'spacing' must be three positive numbers"):
            dataset.discover_cases(tmp_path / "bad.json")


def _inplane_sizes_mm(cases, spacing_of):
    return np.array([dataset.gland_extent_voxels(sitk.ReadImage(c.label))[0] * spacing_of(c) for c in cases])


def test_group_spacing_calibration_makes_gland_sizes_consistent(promise12_data):
    cases = dataset.assign_groups(dataset.discover_cases(promise12_data))
    train_cases, val_cases = dataset.stratified_split(cases, 0.2, seed=0)
    table = dataset.calibrate_group_spacing(train_cases)
    assert set(table) == {c.group for c in cases} and sum(row["cases"] for row in table.values()) == len(train_cases)
    # 512-matrix originals (256 here) are finer than 320-matrix ones (160 here), in-plane and, for the
    # 47-slice "hi" centre, between slices too.
    assert table["256x256-hi"]["spacing"][0] < table["256x256-lo"]["spacing"][0] < table["160x160-lo"]["spacing"][0]
    assert table["256x256-hi"]["spacing"][2] < 0.7 * table["160x160-lo"]["spacing"][2]
    # On the held-out cases (their masks were not used), gland sizes in mm vary much less across
    # centres with the calibrated spacing than with the nominal 1 mm.
    nominal = _inplane_sizes_mm(val_cases, lambda c: 1.0)
    calibrated = _inplane_sizes_mm(val_cases, lambda c: table[c.group]["spacing"][0])
    assert calibrated.std() / calibrated.mean() < 0.6 * nominal.std() / nominal.mean()
    entries = dataset.calibrated_dataset(val_cases, table)
    assert all(e["spacing"] == table[e["group"]]["spacing"] for e in entries)


def test_calibrate_spacing_command_measures_training_cases_only(tmp_path, promise12_data, repo_root, capsys):
    model = repo_root / "Resources" / "Models" / "prostate-gland-t2.pt"
    out = tmp_path / "calibrated.json"
    assert cli.main(["calibrate-spacing", "--data", str(promise12_data), "--out", str(out), "--split-from", str(model)]) == 0
    document = json.loads(out.read_text())
    val = {v["name"] for v in torch.load(model, weights_only=True)["metadata"]["split"]["val"]}
    assert val and not val & set(document["spacing_calibration"]["measured_cases"])
    assert len(document["spacing_calibration"]["measured_cases"]) == 36 - len(val)
    cases = dataset.discover_cases(out)  # the list is a training dataset as written
    assert len(cases) == 36 and all(c.spacing is not None for c in cases)
    assert "256x256-hi: spacing" in capsys.readouterr().out
    zones_model = repo_root / "Resources" / "Models" / "prostate-zones-t2-demo.pt"  # validated on other data
    for bad in (["--reference-mm", "48"], ["--reference-mm", "a,b"], ["--split-from", str(tmp_path / "none.pt")],
                ["--split-from", str(zones_model)]):
        assert cli.main(["calibrate-spacing", "--data", str(promise12_data), "--out", str(tmp_path / "x.json"), *bad]) == 2
        assert "error:" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_prepared_cases_on_working_grid(prepared):
    for case in prepared:
        assert case.image.dtype == np.float32 and case.image.shape[1:] == case.label.shape
        assert np.allclose(case.working.GetSpacing(), preprocess.WORKING_SPACING)
        lo, hi = np.percentile(case.image, [1, 99])
        assert lo == pytest.approx(0, abs=0.02) and hi == pytest.approx(1, abs=0.02)
        # Label volume is preserved by the Gaussian label interpolation (within 10 %).
        original_ml = sitk.GetArrayViewFromImage(case.original).sum() * np.prod(case.original.GetSpacing())
        working_ml = case.label.sum() * np.prod(case.working.GetSpacing())
        assert working_ml == pytest.approx(original_ml, rel=0.1)


def test_normalisation_uses_mrstandardize(promise12_data):
    image = sitk.ReadImage(str(promise12_data / "case13_t2.nii.gz"))
    ours = preprocess.normalize_channel(image)
    assert np.percentile(ours, 1) == pytest.approx(0, abs=1e-4) and np.percentile(ours, 99) == pytest.approx(1, abs=1e-4)
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(normalize(image, "percentile")))
    zeros = image * 0  # a missing (zero-filled) channel stays zero instead of failing
    assert not preprocess.normalize_channel(zeros).any()


def test_working_grid_roundtrip(promise12_data):
    mask = sitk.ReadImage(str(promise12_data / "case13_prostate.nii.gz"))
    image = sitk.ReadImage(str(promise12_data / "case13_t2.nii.gz"))
    array, working = preprocess.to_working_image([image])
    assert np.allclose(working.GetSpacing(), preprocess.WORKING_SPACING) and array.shape[0] == 1

    def centre(img):
        return np.array(img.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in img.GetSize()]))

    np.testing.assert_allclose(centre(working), centre(image), atol=1e-6)  # same physical extent centre
    label = preprocess.label_to_working(mask, working)
    probs = np.stack([label == 0, label == 1]).astype(np.float32)
    back = preprocess.probabilities_to_original(probs, working, image).argmax(0)
    truth = sitk.GetArrayFromImage(mask)
    assert back.shape == truth.shape
    assert 2 * (back * truth).sum() / (back.sum() + truth.sum()) > 0.95


def test_binary_probabilities_to_original_equals_resampling_each_class(promise12_data):
    """The binary shortcut (resample the foreground, background = 1 - it) equals resampling both."""
    image = sitk.ReadImage(str(promise12_data / "case13_t2.nii.gz"))
    _, working = preprocess.to_working_image([image])
    rng = np.random.default_rng(0)
    fg = rng.random(working.GetSize()[::-1]).astype(np.float32)
    probs = np.stack([1 - fg, fg])
    fast = preprocess.probabilities_to_original(probs, working, image)
    three = preprocess.probabilities_to_original(np.stack([1 - fg, fg, np.zeros_like(fg)]), working, image)
    np.testing.assert_allclose(fast, three[:2], atol=1e-5)
    assert fast.shape == (2, *sitk.GetArrayViewFromImage(image).shape)


def test_sampler_without_augmentation_crops_exact_voxels(prepared):
    off = dataset.AugmentConfig(p_rotation=0, p_scale=0, flip_probs=(0, 0, 0), p_intensity_scale=0, p_shift=0,
                                p_gamma=0, p_noise=0)
    sampler = dataset.PatchSampler(prepared[:1], (8, 32, 32), off, p_foreground=1.0, seed=1)
    case = prepared[0]
    for z, y, x in case.foreground[:: max(1, len(case.foreground) // 5)]:
        z, y, x = min(max(z, 4), case.label.shape[0] - 4), max(y, 16), max(x, 16)
        image, label = sampler.sample(0, (z, y, x))
        np.testing.assert_allclose(image[0].numpy(), case.image[0, z - 4:z + 4, y - 16:y + 16, x - 16:x + 16], atol=1e-5)
        np.testing.assert_array_equal(label.numpy(), case.label[z - 4:z + 4, y - 16:y + 16, x - 16:x + 16])
    # Near the volume edge the patch is padded with zeros / background, not wrapped.
    image, label = sampler.sample(0, (0, 0, 0))
    assert float(image[0, :4].abs().sum()) == 0 and int(label[:4].sum()) == 0
    assert float(image[0, 4:, 16:, 16:].abs().sum()) > 0


OFF = dict(p_rotation=0, p_scale=0, flip_probs=(0, 0, 0), p_intensity_scale=0, p_shift=0, p_gamma=0, p_noise=0)


def _label_as_image(case):
    """The case with its label as the image: spatial augmentation must move both identically."""
    return dataset.PreparedCase(case.name, case.group, case.label[None].astype(np.float32), case.label,
                                case.foreground, case.working, case.original)


def test_bigaug_spatial_transforms_keep_image_and_label_aligned(prepared):
    spatial = dataset.AugmentConfig(**{**OFF, "p_rotation": 1, "p_scale": 1, "p_anisotropy": 1, "p_z_scale": 1,
                                       "p_elastic": 1})
    sampler = dataset.PatchSampler([_label_as_image(prepared[0])], (16, 64, 64), spatial, p_foreground=1.0, seed=2)
    still = dataset.PatchSampler([_label_as_image(prepared[0])], (16, 64, 64), dataset.AugmentConfig(**OFF),
                                 p_foreground=1.0, seed=2)
    changed = 0
    for centre in prepared[0].foreground[:: max(1, len(prepared[0].foreground) // 6)][:6]:
        image, label = sampler.sample(0, centre)
        inside, truth = image[0].numpy() > 0.5, label.numpy() > 0
        dice = 2 * (inside & truth).sum() / (inside.sum() + truth.sum())
        assert dice > 0.97, dice  # image and label went through the same deformation
        changed += int((truth != (still.sample(0, centre)[1].numpy() > 0)).sum() > 50)
    assert changed >= 5  # and the deformation did change the anatomy's shape/position


def test_z_scale_jitter_interpolates_between_slices(prepared):
    case = prepared[0]
    centre = case.foreground[len(case.foreground) // 2]
    zoomed = dataset.PatchSampler([case], (8, 32, 32), dataset.AugmentConfig(**{**OFF, "p_z_scale": 1,
                                                                               "z_scale": (2.0, 2.0)}), seed=0)
    image, _ = zoomed.sample(0, centre)
    z = int(round(centre[0]))
    y, x = int(centre[1]), int(centre[2])
    # slice spacing 1/2: patch slice 4 is slice z, patch slice 5 lies half-way between z and z + 1
    np.testing.assert_allclose(image[0, 4].numpy(), case.image[0, z, y - 16:y + 16, x - 16:x + 16], atol=1e-5)
    if z + 1 < case.image.shape[1]:
        halfway = 0.5 * (case.image[0, z] + case.image[0, z + 1])[y - 16:y + 16, x - 16:x + 16]
        np.testing.assert_allclose(image[0, 5].numpy(), halfway, atol=1e-5)


@pytest.mark.parametrize("transform", ["p_bias", "p_contrast", "p_rician", "p_blur", "p_slice_thickness", "p_sharpen"])
def test_each_bigaug_intensity_transform_changes_the_image_not_the_label(prepared, transform):
    case = prepared[0]
    centre = case.foreground[0]
    plain = dataset.PatchSampler([case], (8, 48, 48), dataset.AugmentConfig(**OFF), seed=5).sample(0, centre)
    sampler = dataset.PatchSampler([case], (8, 48, 48), dataset.AugmentConfig(**{**OFF, transform: 1.0}), seed=5)
    image, label = sampler.sample(0, centre)
    torch.testing.assert_close(label, plain[1])
    difference = float((image - plain[0]).abs().mean())
    assert torch.isfinite(image).all() and 0.002 < difference < 0.5 * float(plain[0].abs().mean()), difference


def test_bigaug_profile_is_recorded_and_unknown_profiles_refused():
    overrides = dataset.augment_profile("bigaug")
    config = dataset.AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    assert config.p_elastic > 0 and config.p_bias > 0 and config.scale == (0.75, 1.25)
    assert dataset.augment_profile("standard") == {}
    with pytest.raises(InputError, match="Unknown augmentation profile"):
        dataset.augment_profile("heavy")


def test_sampler_batches_are_foreground_balanced(prepared):
    sampler = dataset.PatchSampler(prepared, (8, 48, 48), p_foreground=0.5, seed=0)
    images, labels = sampler.batch(16)
    assert images.shape == (16, 1, 8, 48, 48) and labels.shape == (16, 8, 48, 48) and labels.dtype == torch.int64
    with_fg = int((labels.flatten(1).sum(1) > 0).sum())
    assert with_fg >= 6  # ~half centred on the gland, plus random patches that hit it
    assert set(torch.unique(labels).tolist()) <= {0, 1}


def test_dice_ce_loss_is_small_for_perfect_logits():
    target = torch.zeros(2, 4, 8, 8, dtype=torch.long)
    target[:, 1:3, 2:6, 2:6] = 1
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 4, 1, 2, 3).float() * 20 - 10
    assert float(train.dice_ce_loss(perfect, target)) < 1e-3
    assert float(train.dice_ce_loss(-perfect, target)) > 1.5


def test_tiny_training_run_and_resume(tmp_path, promise12_data, capsys, monkeypatch):
    data = _json_list(tmp_path / "list.json", promise12_data, spacings={"case13": [1.3, 1.3, 3.4]})
    out = tmp_path / "run"
    common = ["train", "--data", str(data), "--out", str(out), "--iterations", "4", "--batch", "2",
              "--patch", "8,32,32", "--features", "4,8,8,8,8", "--val-every", "1", "--val-overlap", "0",
              "--threads", "1", "--seed", "3", "--augment", "bigaug"]
    assert cli.main(common + ["--epochs", "2"]) == 0
    for name in ("last.pt", "model.pt", "model.json", "history.csv", "learning_curve.png", "split.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and all(r["val_dice"] != "" for r in rows)
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    split = json.loads((out / "split.json").read_text())
    assert len(split["val"]) == 1 and len(split["train"]) == 2
    # the model says which voxel size each case was trained with where the list overrode it
    assert {e["name"]: e.get("spacing") for e in split["train"] + split["val"]} == {
        "case13": [1.3, 1.3, 3.4], "case25": None, "case38": None}
    printed = capsys.readouterr().out
    assert "epoch 2/2 loss" in printed and "best validation Dice" in printed

    assert cli.main(common + ["--epochs", "3", "--resume", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "resumed from epoch 2" in captured.out
    assert "PROGRESS 1.0000 epoch 3/3 loss" in captured.err  # machine-readable lines for jobs.Job
    rows = list(csv.DictReader((out / "history.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 3
    steps = {int(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {12}  # optimizer state carried over: 3 epochs x 4 iterations

    model, meta = train.load_model(out / "model.pt")
    assert meta["format"] == train.MODEL_FORMAT and meta["preprocess"]["spacing_xyz_mm"] == list(preprocess.WORKING_SPACING)
    assert meta["labels"] == {"0": "background", "1": "prostate"} and meta["validation"]["per_case"]
    assert meta["training"]["augment"] == dataset.augment_profile("bigaug")  # the card can say what it saw
    assert not model.training
    # The deployed path: T2 in, label map out on the T2 grid.
    from ProstateAICore import geometry
    from ProstateAILib import inference

    t2 = sitk.ReadImage(str(promise12_data / "case25_t2.nii.gz"))
    seg = inference.segment_image(model, meta, [t2], tta=True)
    assert geometry.same_grid(seg, t2) and seg.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(seg)).tolist()) <= {0, 1}
    with pytest.raises(InputError, match="Nothing to resume"):
        train.run_training(train.TrainConfig(data=str(data), out=str(tmp_path / "other")), resume=True)

    # Fine-tuning: --init copies the weights into a new run (fresh optimizer and schedule).
    tuned = tmp_path / "tuned"
    start = {}
    real_init = train._initialise_from
    monkeypatch.setattr(train, "_initialise_from", lambda m, source, path, log: (
        real_init(m, source, path, log), start.update({k: v.clone() for k, v in m.state_dict().items()})))
    assert cli.main([*common[:3], "--out", str(tuned), *common[5:], "--epochs", "1",
                     "--init", str(out / "model.pt"), "--no-val-tta", "--seed", "4"]) == 0
    monkeypatch.undo()
    assert "weights initialised from" in capsys.readouterr().out
    # another seed, same split: the source model's training cases never become validation cases
    assert json.loads((tuned / "split.json").read_text()) == split
    for key, value in model.state_dict().items():
        torch.testing.assert_close(start[key], value.float())
    state = torch.load(tuned / "last.pt", weights_only=True)
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {4}
    other = network.build_network(network.NetConfig(features=(4, 8, 8, 8, 16)))
    with pytest.raises(InputError, match="different network"):
        train._initialise_from(other, model, str(out / "model.pt"), print)


def test_zone_model_training_path_and_cascade(tmp_path, prostatex_data, capsys):
    """The zone model's path end to end: T2 + gland-mask channels from a JSON list, zones relabelled
    to TZ only, a (tiny) training run, then the cascade using that model."""
    case = prostatex_data / "ProstateX-0000"
    data = tmp_path / "zones.json"
    data.write_text(json.dumps([{"name": "P0", "image": [str(case / "t2w"), str(case / "masks" / "prostate.nii.gz")],
                                 "label": str(case / "masks" / "zones.nii.gz")}]))
    out = tmp_path / "zones"
    assert cli.main(["train", "--data", str(data), "--out", str(out), "--channels", "T2,prostate_mask",
                     "--labels", "background,TZ", "--label-map", "1=0,2=1", "--val-fraction", "0",
                     "--epochs", "1", "--iterations", "2", "--patch", "16,48,48", "--features", "4,8,8,8,8",
                     "--threads", "1"]) == 0
    model, meta = train.load_model(out / "model.pt")
    assert meta["channels"] == ["T2", "prostate_mask"] and meta["labels"] == {"0": "background", "1": "TZ"}
    assert meta["preprocess"]["normalization"]["not_normalised"] == ["prostate_mask"]

    # the mask channel is resampled, not normalised; the label keeps only TZ
    prepared = dataset.prepare_case(dataset.discover_cases(data)[0], channel_names=("T2", "prostate_mask"),
                                    label_map={1: 0, 2: 1})
    gland = sitk.ReadImage(str(case / "masks" / "prostate.nii.gz"))
    zones = sitk.GetArrayFromImage(sitk.ReadImage(str(case / "masks" / "zones.nii.gz")))
    assert prepared.image[1].min() == 0.0 and prepared.image[1].max() == 1.0
    ml = np.prod(preprocess.WORKING_SPACING) / 1000
    gland_ml = sitk.GetArrayViewFromImage(gland).sum() * np.prod(gland.GetSpacing()) / 1000
    assert prepared.image[1].sum() * ml == pytest.approx(gland_ml, rel=0.03)  # partial volume preserved
    tz_ml = (zones == 2).sum() * np.prod(gland.GetSpacing()) / 1000
    assert set(np.unique(prepared.label)) == {0, 1}
    assert prepared.label.sum() * ml == pytest.approx(tz_ml, rel=0.1)

    from ProstateAILib import pipeline

    t2 = sitk.ReadImage(str(case / "masks" / "prostate.nii.gz"))  # geometry only
    result = pipeline.segment(pipeline.read_inputs(case / "t2w"), zones_model=str(out / "model.pt"), threads=1)
    p = sitk.GetArrayViewFromImage(result.prostate)
    z = sitk.GetArrayViewFromImage(result.zones)
    assert np.array_equal(p == 1, z > 0) and result.report["models"]["zones"]["name"] == "model"
    assert result.zones.GetSize() == t2.GetSize()


def test_weight_average_is_what_is_validated_and_saved(tmp_path, promise12_data, capsys):
    data = _json_list(tmp_path / "list.json", promise12_data)
    out = tmp_path / "run"
    common = ["train", "--data", str(data), "--out", str(out), "--iterations", "3", "--batch", "1",
              "--patch", "8,32,32", "--features", "4,8,8,8,8", "--val-every", "1", "--val-overlap", "0",
              "--no-val-tta", "--threads", "1", "--seed", "3", "--ema", "0.5"]
    assert cli.main(common + ["--epochs", "1"]) == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert int(state["ema"]["n_averaged"]) == 3  # one update per optimizer step
    averaged = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["metadata"]["training"]["ema"] == 0.5
    weights = [k for k, v in state["model"].items() if v.is_floating_point() and v.dim() > 1]
    for key in weights:  # the kept model is the average (stored as float16), not the raw weights
        assert torch.equal(saved["state_dict"][key], averaged[key].to(torch.float16)), key
    assert any(not torch.equal(saved["state_dict"][k], state["model"][k].to(torch.float16)) for k in weights)
    assert cli.main(common + ["--epochs", "2", "--resume"]) == 0
    assert int(torch.load(out / "last.pt", weights_only=True)["ema"]["n_averaged"]) == 6  # carried over
    capsys.readouterr()
    with pytest.raises(InputError, match="--ema must be between 0 and 1"):
        train.weight_average(network.build_network(), 1.5)
