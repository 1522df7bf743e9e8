"""The quality verdict in every report.json, both ways on real data: ordinary T2s are "ok"; an ADC map
given as the T2 is "check" (with the reason); a CT given as the T2 is refused before any model runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ProstateAILib import quality

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.data


def segment(t2, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ProstateAIApp.cli", "segment", "--t2", str(t2), "--out", str(out),
                           "--threads", "2"], capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("case", ["ProstateX-0000", "ProstateX-0218"])
def test_ordinary_t2_is_ok(prostatex_data, tmp_path, case):
    assert segment(prostatex_data / case / "t2w", tmp_path / "out").returncode == 0
    verdict = json.loads((tmp_path / "out" / "report.json").read_text())["quality"]
    assert verdict["status"] == "ok", verdict["reasons"]
    assert verdict["bounds"] == quality.BOUNDS and 8 < verdict["metrics"]["volume_ml"] < 250


def test_adc_given_as_t2_is_check(prostatex_case, tmp_path):
    assert segment(prostatex_case / "adc", tmp_path / "out").returncode == 0
    verdict = json.loads((tmp_path / "out" / "report.json").read_text())["quality"]
    assert verdict["status"] == "check"
    assert any("names another sequence" in reason for reason in verdict["reasons"])


def test_ct_given_as_t2_is_refused_before_the_models(ct_data, tmp_path):
    done = segment(ct_data / "radiomics_lung1" / "lung1_image.nrrd", tmp_path / "out")
    assert done.returncode == 2 and "Is it a CT in Hounsfield units?" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_each_prediction_rule_can_raise_a_check():
    inputs = quality.input_metrics([[[0, 10], [20, 30]]], "t2_tse_tra")
    good = {"volume_ml": 40.0, "largest_component_fraction": 1.0, "compactness": 0.45, "centre_offset": 0.05,
            "mean_probability": 0.9, "uncertain_fraction": 0.3}
    assert quality.verdict(inputs, good)["status"] == "ok"
    for key, bad, words in (("volume_ml", 656.8, "outside the plausible"), ("largest_component_fraction", 0.6, "one object"),
                            ("compactness", 0.1, "not compact"), ("centre_offset", 0.5, "off-centre"),
                            ("mean_probability", 0.5, "low model confidence"), ("uncertain_fraction", 2.0, "undecided")):
        result = quality.verdict(inputs, {**good, key: bad})
        assert result["status"] == "check" and any(words in r for r in result["reasons"]), (key, result["reasons"])
