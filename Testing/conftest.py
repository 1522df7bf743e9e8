"""Shared pytest fixtures: where ../shared/data is, and a real headless MRML scene."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Module folders hold <Module>.py files; Common holds the shared MRML glue and widget base. Slicer
# puts them on sys.path too.
for folder in ("Common", "CTPreprocess", "MRStandardize", "ProstateAI", "Testing"):
    path = str(REPO / folder)
    if path not in sys.path:
        sys.path.insert(0, path)

SHARED_DATA = Path(os.environ.get("PROSTATEAI_SHARED_DATA", REPO.parent / "shared" / "data"))

# The ONNX exports of the models (ProstateAILib.onnx_backend) go to a folder of this test session, not
# the user's cache: every run exports afresh from the committed weights (a few seconds per model).
if "PROSTATEAI_CACHE" not in os.environ:
    import tempfile

    os.environ["PROSTATEAI_CACHE"] = tempfile.mkdtemp(prefix="prostateai-test-cache-")


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set PROSTATEAI_SHARED_DATA or put ../shared beside the repo)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def ct_data(shared_data) -> Path:
    return _require(shared_data / "ct")


@pytest.fixture(scope="session")
def promise12_data(shared_data) -> Path:
    return _require(shared_data / "promise12")


@pytest.fixture(scope="session")
def prostatex_data(shared_data) -> Path:
    return _require(shared_data / "prostatex")


@pytest.fixture(scope="session")
def picai_case(shared_data) -> Path:
    """picai_10000_1000000: T2/ADC/HBV NIfTI cropped to 72 mm (the gland fills the view), AI gland/zone masks."""
    return _require(shared_data / "picai" / "picai_10000_1000000")


@pytest.fixture(scope="session")
def prostatex_case(prostatex_data) -> Path:
    """ProstateX-0000: T2/ADC/HBV DICOM folders and gland/zone/lesion masks (masks/)."""
    return _require(prostatex_data / "ProstateX-0000")


@pytest.fixture(scope="session")
def prostatex_t2(prostatex_case):
    """ProstateX-0000's oblique T2 (384 x 384 x 19, 0.5 x 0.5 x 3 mm), read once per test session."""
    from ProstateAICore.imageio import read_image

    return read_image(prostatex_case / "t2w")


@pytest.fixture()
def mrml_scene():
    """A fresh real MRML scene (slicer-core) with the module logics registered."""
    pytest.importorskip("slicer")
    from headless import install, make_scene

    install()
    scene, app_logic, logics = make_scene()
    yield scene
    scene.Clear(1)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
