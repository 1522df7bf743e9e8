"""Segment terminology: the coded concept a segment stands for, as Slicer stores it.

Slicer's segmentation nodes and .seg.nrrd files carry a "TerminologyEntry" string
(category~type~modifier~region~...) built from SNOMED CT codes; DICOM SEG uses the same codes.
"""

from __future__ import annotations

_ANATOMY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
            "~SCT^{code}^{meaning}~^^~Anatomic codes - DICOM master list~^^~^^")


def terminology_entry(code: str, meaning: str) -> str:
    """Slicer's terminology string for an anatomical structure with SNOMED CT `code` ("41216001", "Prostate")."""
    return _ANATOMY.format(code=code, meaning=meaning)
