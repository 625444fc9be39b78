"""Least exposure: the sidecar and measurements of a DICOM run carry no patient identity.

(The DICOM SEG's own identity tags are checked against a list in ``tests/test_dicom_seg.py``:
``ALLOWED_TAGS``.) The sidecar records the series UID, for provenance, and nothing of the
patient: not the name, ID, birth date, sex, age, accession number or study ID.
"""

from __future__ import annotations

from pathlib import Path

import pydicom

from medsam.cli import main


def test_sidecar_and_measurements_carry_no_patient_identity(sample_data: Path, tmp_path: Path) -> None:
    series = sample_data / "dcmqi_ct3slice" / "ct-3slice"
    header = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True)
    identity = {k: str(header.get(k) or "") for k in
                ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "AccessionNumber", "StudyID")}
    present = {k: v for k, v in identity.items() if len(v) >= 2}  # values worth searching for
    assert {"PatientName", "PatientID", "AccessionNumber"} <= set(present)  # the test can fail
    for name in ("liver.nii.gz", "liver.dcm"):
        out = tmp_path / name
        assert main(["segment", str(series), "-o", str(out), "--box", "1:280,150,420,300", "--no-propagate",
                     "--device", "cpu", "--quiet"]) == 0
        for written in (out.with_name(out.name + ".json"), out.with_name(out.name + ".measurements.csv")):
            text = written.read_text()
            leaked = {k: v for k, v in present.items() if v in text}
            assert not leaked, f"{written.name} holds {leaked}"
            assert "Patient" not in text
