"""QGIS as a GIS user runs it, headless: run by the system's python3 (Debian's python3-qgis, which
the project's virtual environment cannot import), not by pytest. For each layer of the JSON list
given (`name`, `uri` of QGIS's "wms" provider, which reads XYZ and WMTS, `extent` in EPSG:3857,
`size` in pixels, `out`), it renders the layer alone over the extent into the PNG `out`, and
prints a JSON object: each name's `valid` and, when not valid, QGIS's `error`."""

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


def main() -> None:
    app = QgsApplication([], False)
    app.initQgis()
    answers = {}
    with open(sys.argv[1], encoding="utf-8") as file:
        layers = json.load(file)
    for spec in layers:
        layer = QgsRasterLayer(spec["uri"], spec["name"], "wms")
        answers[spec["name"]] = {"valid": layer.isValid()}
        if layer.isValid():
            render(layer, spec["extent"], spec["size"], spec["out"])
        else:
            answers[spec["name"]]["error"] = layer.error().summary()
    print(json.dumps(answers))
    app.exitQgis()


if __name__ == "__main__":
    main()
