"""DICOM SR of ``medlens detect``: a TID 1500 measurement report with one finding per box.

Each box becomes a planar ROI (its rectangle as a SCOORD polyline on the source image) with
width and height in mm and the detector's probability, via highdicom's Comprehensive 3D SR.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medlens.detect.boxes import Boxes
from medlens.io.atomic import atomic_output
from medlens.io.dicom import fill_type2_attributes

if TYPE_CHECKING:
    from medlens.detect.infer import Slice


def finding_code(name: str) -> Any:
    from highdicom.sr import CodedConcept

    if name.lower() in ("stone", "kidney stone", "calculus"):
        return CodedConcept(value="95570007", scheme_designator="SCT", meaning="Kidney stone")
    return CodedConcept(value="52988006", scheme_designator="SCT", meaning="Lesion")


def write_sr(
    path: Path, results: list[tuple[Slice, Boxes]], names: dict[int, str], card: Any
) -> Path:
    """TID 1500 measurement report: one planar ROI (rectangle polyline) per box."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    source_files = results[0][0].image.metadata.get("source_files", [])
    evidence_by_uid = {}
    for file in source_files:
        dataset = fill_type2_attributes(pydicom.dcmread(file))
        evidence_by_uid[dataset.SOPInstanceUID] = dataset
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"medlens {card.name}", version=card.sha256[:12] or "1"
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="medlens detect"
        ),
    )
    findings = []
    counter = 0
    for item, boxes in results:
        dataset = (
            evidence_by_uid.get(item.source.SOPInstanceUID) if item.source is not None else None
        )
        if dataset is None:
            continue
        size_mm = boxes.size_mm(item.image)
        for (x0, y0, x1, y1), score, label, (w_mm, h_mm) in zip(
            boxes.xyxy, boxes.scores, boxes.labels, size_mm, strict=True
        ):
            counter += 1
            # SCOORD image coordinates (column, row) put 0.0 at the top-left corner of the
            # top-left pixel: the same pixel-edge convention as Boxes.xyxy
            rectangle = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=rectangle,
                source_image=hd.sr.SourceImageForRegion.from_source_image(dataset),
            )
            name = names.get(int(label), str(label))
            findings.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=hd.UID(), identifier=f"{name} {counter}"
                    ),
                    referenced_region=region,
                    finding_type=finding_code(name),
                    algorithm_id=algorithm,
                    measurements=[
                        hd.sr.Measurement(
                            name=codes.SCT.Width, value=float(w_mm), unit=codes.UCUM.Millimeter
                        ),
                        hd.sr.Measurement(
                            name=codes.DCM.Height, value=float(h_mm), unit=codes.UCUM.Millimeter
                        ),
                        hd.sr.Measurement(
                            name=codes.DCM.Probability, value=float(score), unit=codes.UCUM.NoUnits
                        ),
                    ],
                )
            )
    if not findings:
        # TID 1500 needs one measurement group: say "0 detections" for the examined images
        findings.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(), identifier="no findings"
                ),
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=hd.sr.CodedConcept(
                            value="detections",
                            scheme_designator="99MEDLENS",
                            meaning="Number of detections",
                        ),
                        value=0.0,
                        unit=codes.UCUM.NoUnits,
                    )
                ],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=findings,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=list(evidence_by_uid.values()),
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence_by_uid.values()),
        content=report,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medlens",
        is_complete=True,
    )
    with atomic_output(path) as temporary:
        sr.save_as(temporary, enforce_file_format=True)
    return path
