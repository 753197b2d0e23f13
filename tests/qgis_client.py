"""QGIS as a GIS user runs it, headless: run by the system's python3 (Debian's python3-qgis, which
the project's virtual environment cannot import), not by pytest. For each layer of the JSON list
given (`name`, `uri` of a QGIS provider, `provider`: "wms" (the default; it reads XYZ and WMTS)
or "gdal" (a raster file or URL, as Add Raster Layer opens it), then either `extent` in EPSG:3857,
`size` in pixels and `out`, or `probes`, points in the layer's CRS), it renders the layer alone
over the extent into the PNG `out`, or identifies band 1's value at each probe as a user's click
does, and prints a JSON object: each name's `valid`, its `values` at the probes, and, when not
valid, QGIS's `error`."""

import json
import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# Qt reads QT_QPA_PLATFORM when QGIS loads it: set above, before these imports.
from qgis.core import (
    QgsApplication,
    QgsCoordinateReferenceSystem,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsPointXY,
    QgsRaster,
    QgsRasterLayer,
    QgsRectangle,
)
from qgis.PyQt.QtCore import QSize
from qgis.PyQt.QtGui import QColor


def render(layer: QgsRasterLayer, extent: list[float], size: int, out: str) -> None:
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(QgsCoordinateReferenceSystem("EPSG:3857"))
    settings.setExtent(QgsRectangle(*extent))
    settings.setOutputSize(QSize(size, size))
    settings.setBackgroundColor(QColor(255, 255, 255, 0))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(out)


def identify(layer: QgsRasterLayer, x: float, y: float) -> float | None:
    """Band 1's value at a point, as the Identify Features tool reads it (None where no data is)."""
    found = layer.dataProvider().identify(QgsPointXY(x, y), QgsRaster.IdentifyFormatValue).results().get(1)
    return None if found is None else float(found)


def answer(spec: dict) -> dict:
    """One layer's answer. Its layer is gone when this returns: QGIS crashed on exit (SIGSEGV)
    while a layer of its gdal provider was still held."""
    layer = QgsRasterLayer(spec["uri"], spec["name"], spec.get("provider", "wms"))
    if not layer.isValid():
        return {"valid": False, "error": layer.error().summary()}
    if "probes" in spec:
        return {"valid": True, "values": [identify(layer, x, y) for x, y in spec["probes"]]}
    render(layer, spec["extent"], spec["size"], spec["out"])
    return {"valid": True}


def main() -> None:
    app = QgsApplication([], False)
    app.initQgis()
    answers = {}
    with open(sys.argv[1], encoding="utf-8") as file:
        layers = json.load(file)
    for spec in layers:
        answers[spec["name"]] = answer(spec)
    print(json.dumps(answers))
    app.exitQgis()


if __name__ == "__main__":
    main()
