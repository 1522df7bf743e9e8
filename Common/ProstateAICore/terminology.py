"""Segment terminology: the coded concept a segment stands for, as Slicer stores it.

Slicer's segmentation nodes and .seg.nrrd files carry a "TerminologyEntry" string
(context~category~type~type modifier~anatomic context~anatomic region~region modifier) built from
SNOMED CT codes; DICOM SEG uses the same codes. Anatomy (prostate, zones) is an "Anatomical
Structure"; a lesion is a "Morphologically Altered Structure" whose anatomic region is the prostate.
"""

from __future__ import annotations

LESION = "52988006"  # SNOMED CT "Lesion"
_ANATOMY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
            "~SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master list~^^~^^")
_LESION = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
           "~SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master list~SCT^41216001^Prostate~^^")


def terminology_entry(code: str, meaning: str) -> str:
    """Slicer's terminology string for SNOMED CT type `code`: an anatomical structure ("41216001",
    "Prostate"), or a lesion (LESION) in the prostate."""
    return (_LESION if code == LESION else _ANATOMY).format(code=code, meaning=meaning)
