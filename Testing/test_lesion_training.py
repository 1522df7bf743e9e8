"""The trainable lesion path: the PI-CAI / nnU-Net layout builder on the real cases, `train --preset
lesions` (channels, ISUP labels, label map), and the published demonstration model (catalog entry, card,
and the gland/zones defaults left as they were)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from ProstateAICore.errors import InputError
from ProstateAICore.geometry import same_grid
from ProstateAICore.imageio import read_image
from ProstateAILib import cli, dataset, models, preprocess, train

DEMO = "lesion-detector-demo"


@pytest.fixture(scope="module")
def layout(shared_data, tmp_path_factory):
    cases = [shared_data / "prostatex" / "ProstateX-0000", shared_data / "picai" / "picai_10000_1000000"]
    if not all(c.is_dir() for c in cases):
        pytest.skip("shared ProstateX-0000 / picai_10000_1000000 not found")
    out = tmp_path_factory.mktemp("lesion_layout")
    written = dataset.write_picai_layout(cases, out)
    return out, cases, written


@pytest.mark.data
def test_layout_builder_on_the_real_cases(layout):
    out, (prostatex, picai), written = layout
    assert len(written) == 12 and all(p.is_file() for p in written)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["ProstateX-0000.nii.gz", "picai_10000_1000000.nii.gz"]
    cases = dataset.discover_cases(out)
    assert [c.name for c in cases] == ["ProstateX-0000", "picai_10000_1000000"] and all(len(c.images) == 5 for c in cases)

    t2 = read_image(cases[0].images[0])
    assert same_grid(t2, read_image(prostatex / "t2w"))  # the DICOM T2 written as NIfTI, same grid
    adc = read_image(cases[0].images[1])
    assert adc.GetSize() == read_image(prostatex / "adc").GetSize() and not same_grid(adc, t2)  # ADC keeps its grid
    zones = sitk.GetArrayFromImage(read_image(prostatex / "masks" / "zones.nii.gz"))
    pz, tz = (sitk.GetArrayFromImage(read_image(cases[0].images[i])) for i in (3, 4))
    assert same_grid(read_image(cases[0].images[3]), t2)
    assert np.array_equal(pz == 1, zones == 1) and np.array_equal(tz == 1, zones == 2)
    label = read_image(cases[0].label)
    assert same_grid(label, t2) and set(np.unique(sitk.GetArrayViewFromImage(label))) == {0, 3}  # ISUP 3 lesion
    assert sitk.GetArrayViewFromImage(read_image(cases[1].label)).max() == 0  # the negative case

    with pytest.raises(InputError, match="lesions.nii.gz"):
        dataset.write_picai_layout([out], out / "again")


@pytest.mark.data
def test_label_map_turns_isup3_into_class_2_and_masks_stay_in_unit_range(layout):
    out, _, _ = layout
    case = dataset.discover_cases(out)[0]
    prepared = dataset.prepare_case(case, channel_names=dataset.LESION_CHANNELS, label_map=train.LESION_LABEL_MAP)
    assert set(np.unique(prepared.label)) == {0, 2}  # ISUP 3 -> class 2 ("ISUP3")
    assert prepared.image.shape[0] == 5  # ADC/HBV (2 mm grid) resampled onto the T2 working grid
    for mask in prepared.image[3:]:
        assert mask.min() == 0.0 and mask.max() == 1.0
    isup = sitk.GetImageFromArray(np.arange(6, dtype=np.uint8).reshape(1, 1, 6))
    assert sitk.GetArrayViewFromImage(dataset.remap_labels(isup, train.LESION_LABEL_MAP)).ravel().tolist() == [0, 0, 1, 2, 3, 3]


@pytest.mark.data
def test_train_preset_lesions_tiny_run(layout, tmp_path, capsys):
    out, cases, _ = layout
    run = tmp_path / "run"
    fast = ["--val-fraction", "0", "--epochs", "1", "--iterations", "2", "--batch", "1", "--patch", "8,32,32",
            "--features", "4,8,8,8,8", "--threads", "1"]
    assert cli.main(["train", "--preset", "lesions", "--data", str(out), "--out", str(run), *fast]) == 0
    _, meta = train.load_model(run / "model.pt")
    assert meta["labels"] == {"0": "background", "1": "ISUP2", "2": "ISUP3", "3": "ISUP>=4"}
    assert meta["channels"] == ["T2", "ADC", "HBV", "PZ_mask", "TZ_mask"] and meta["net"]["in_channels"] == 5
    assert meta["preprocess"]["normalization"]["not_normalised"] == ["PZ_mask", "TZ_mask"]
    assert {int(k): v for k, v in meta["training"]["label_map"].items()} == {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 5: 3}
    assert "lesion" in meta["task"]

    # three sequences without zone masks: three channels; explicit options still override the preset
    three = tmp_path / "three"
    dataset.write_picai_layout(cases[:1], three, zones=False)
    assert train.preset_settings("lesions", str(three))["channels"] == ("T2", "ADC", "HBV")
    run3 = tmp_path / "run3"
    assert cli.main(["train", "--preset", "lesions", "--data", str(three), "--out", str(run3), "--labels",
                     "background,csPCa", "--label-map", "1=0,2=1,3=1,4=1,5=1", *fast]) == 0
    _, meta3 = train.load_model(run3 / "model.pt")
    assert meta3["channels"] == ["T2", "ADC", "HBV"] and meta3["labels"] == {"0": "background", "1": "csPCa"}
    capsys.readouterr()
    # four images per case fits neither form: one clear line, exit 2
    (three / "imagesTr" / "ProstateX-0000_0003.nii.gz").symlink_to(three / "imagesTr" / "ProstateX-0000_0000.nii.gz")
    assert cli.main(["train", "--preset", "lesions", "--data", str(three), "--out", str(tmp_path / "x"), *fast]) == 2
    assert "3 (T2, ADC, HBV) or 5" in capsys.readouterr().err


def test_published_demo_model_loads_with_its_entry_and_card(repo_root):
    catalog = models.load_catalog()
    entry = catalog[DEMO]
    assert entry["task"] == "lesions" and entry.get("demonstration_only") is True
    assert entry["size_bytes"] < 1_000_000 and entry["sha256"] == models.sha256_of(entry["path"])
    model, meta = models.load(DEMO)  # sha256-checked, torch.load(weights_only=True)
    assert len(meta["labels"]) == 4 and 3 <= len(meta["channels"]) <= 5
    card = repo_root / "Resources" / entry["card"]
    text = card.read_text()
    for phrase in ("two cases", "ISUP 3", "no validation", "NOT used by `segment`", "prostateai train --preset lesions"):
        assert phrase in text, phrase
    raw = (repo_root / "Resources" / "Models.json").read_text() + text
    assert not re.search(r"(^|[\"'(=:\s])/(work|home|tmp|Users|root)/", raw, re.M)


def test_gland_and_zones_defaults_are_unchanged():
    catalog = models.load_catalog()
    assert models.default_model("gland", catalog) == "prostate-gland-t2"
    assert models.default_model("zones", catalog) == "prostate-zones-t2-demo"
    # what the Slicer Logic offers per task (ProstateAILogic.modelChoices filters the same way)
    for task in ("gland", "zones"):
        assert DEMO not in [name for name, e in catalog.items() if e.get("task") == task]
    entries = json.loads(models.catalog_path().read_text())["models"]
    assert [e["task"] for e in entries][:2] == ["gland", "zones"]
