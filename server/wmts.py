"""OGC WMTS 1.0.0 capabilities (RESTful), so QGIS and GDAL add the layers by URL.

Built with xml.etree.ElementTree, which escapes every text and attribute (an unescaped `&` in
ResourceURL is what stopped QGIS reading TiTiler's document, titiler#936). Names carry their
prefix as written (`ows:Title`) and the root declares the namespaces: ElementTree's own namespace
handling cannot write unprefixed attributes beside a default namespace."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import NamedTuple

WMTS = "http://www.opengis.net/wmts/1.0"
OWS = "http://www.opengis.net/ows/1.1"
XLINK = "http://www.w3.org/1999/xlink"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
SCHEMA = "http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"

# Characters XML 1.0 cannot hold even escaped (control characters from a query text): dropped.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# OGC WebMercatorQuad / GoogleMapsCompatible at 256 px: scale denominator of zoom 0.
ZOOM0_SCALE = 559082264.0287178
ORIGIN = 20037508.3427892


class Dimension(NamedTuple):
    """A layer's dimension: a client puts the value it picks from `values` (else `default`) for
    `{identifier}` in the ResourceURL template, as QGIS's "Select dimensions" and GDAL do."""

    identifier: str
    title: str
    abstract: str
    uom: str
    default: str
    values: tuple[str, ...]


class Layer(NamedTuple):
    identifier: str
    title: str
    template: str  # the ResourceURL template
    media_type: str  # of its tiles
    abstract: str  # what the colours (or values) mean: the layer's legend in words
    legend_url: str | None  # the colour ramp as a PNG; None for tiles of values
    dimensions: tuple[Dimension, ...] = ()


def _xml(text: str) -> str:
    return NOT_XML.sub("", text)


def _add(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    """A child element with `text` and attributes (control characters XML cannot hold dropped)."""
    child = ET.SubElement(parent, tag, {k: _xml(v) for k, v in attrib.items()})
    if text is not None:
        child.text = _xml(text)
    return child


def _operations(parent: ET.Element, self_url: str, tiles_url: str) -> None:
    """Both operations in the RESTful encoding alone, the only one served: the capabilities at
    their own URL, tiles under `tiles_url`, the prefix of the ResourceURL templates (as GeoWebCache
    writes its RESTful GetTile). No KVP GetTile is advertised, for none is served; the section is
    kept because OWSLib before 0.17 failed on a document without it, and later OWSLib reads a
    GetTile of RESTful encoding alone as a RESTful-only service and follows ResourceURL."""
    metadata = _add(parent, "ows:OperationsMetadata")
    for name, href in (("GetCapabilities", self_url), ("GetTile", tiles_url)):
        http = _add(_add(_add(metadata, "ows:Operation", name=name), "ows:DCP"), "ows:HTTP")
        constraint = _add(_add(http, "ows:Get", **{"xlink:href": href}), "ows:Constraint", name="GetEncoding")
        _add(_add(constraint, "ows:AllowedValues"), "ows:Value", "RESTful")


def _layer(contents: ET.Element, layer: Layer, bounds: tuple[float, ...]) -> None:
    west, south, east, north = bounds
    element = _add(contents, "Layer")
    _add(element, "ows:Title", layer.title)
    _add(element, "ows:Abstract", layer.abstract)
    box = _add(element, "ows:WGS84BoundingBox", crs="urn:ogc:def:crs:OGC:2:84")
    _add(box, "ows:LowerCorner", f"{west} {south}")
    _add(box, "ows:UpperCorner", f"{east} {north}")
    _add(element, "ows:Identifier", layer.identifier)
    style = _add(element, "Style", isDefault="true")
    _add(style, "ows:Identifier", "default")
    if layer.legend_url is not None:
        _add(style, "LegendURL", format="image/png", **{"xlink:href": layer.legend_url})
    _add(element, "Format", layer.media_type)
    for dimension in layer.dimensions:
        _dimension(element, dimension)
    _add(_add(element, "TileMatrixSetLink"), "TileMatrixSet", "WebMercatorQuad")
    _add(element, "ResourceURL", format=layer.media_type, resourceType="tile", template=layer.template)


def _dimension(layer: ET.Element, dimension: Dimension) -> None:
    """A Dimension's elements in the order the WMTS schema gives them."""
    element = _add(layer, "Dimension")
    _add(element, "ows:Title", dimension.title)
    _add(element, "ows:Abstract", dimension.abstract)
    _add(element, "ows:Identifier", dimension.identifier)
    _add(element, "ows:UOM", dimension.uom)
    _add(element, "Default", dimension.default)
    for value in dimension.values:
        _add(element, "Value", value)


def _tile_matrix_set(contents: ET.Element, zooms: tuple[int, int], size: int) -> None:
    """WebMercatorQuad with `size`-pixel tiles from zoom `zooms[0]` to `zooms[1]`: at zoom z as
    many tiles, each pixel smaller."""
    matrices = _add(contents, "TileMatrixSet")
    _add(matrices, "ows:Identifier", "WebMercatorQuad")
    _add(matrices, "ows:SupportedCRS", "urn:ogc:def:crs:EPSG::3857")
    if size == 256:  # the OGC well-known scale set is declared for 256-pixel tiles only
        _add(matrices, "WellKnownScaleSet", "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible")
    for z in range(zooms[0], zooms[1] + 1):
        n = 1 << z
        matrix = _add(matrices, "TileMatrix")
        _add(matrix, "ows:Identifier", str(z))
        _add(matrix, "ScaleDenominator", repr(ZOOM0_SCALE / n * 256 / size))
        _add(matrix, "TopLeftCorner", f"{-ORIGIN} {ORIGIN}")
        for name, value in (("TileWidth", size), ("TileHeight", size), ("MatrixWidth", n), ("MatrixHeight", n)):
            _add(matrix, name, str(value))


def capabilities(
    self_url: str,
    tiles_url: str,
    layers: list[Layer],
    bounds: tuple[float, ...],
    zooms: tuple[int, int],
    tile_size: int = 256,
) -> str:
    """The document at `self_url`: the layers over WebMercatorQuad with `tile_size`-pixel tiles,
    whose templates start with `tiles_url`."""
    namespaces = {"xmlns": WMTS, "xmlns:ows": OWS, "xmlns:xlink": XLINK, "xmlns:xsi": XSI}
    root = ET.Element("Capabilities", {**namespaces, "xsi:schemaLocation": f"{WMTS} {SCHEMA}", "version": "1.0.0"})
    service = _add(root, "ows:ServiceIdentification")
    _add(service, "ows:Title", "Soundscape tiles")
    _add(service, "ows:ServiceType", "OGC WMTS")
    _add(service, "ows:ServiceTypeVersion", "1.0.0")
    _operations(root, self_url, tiles_url)
    contents = _add(root, "Contents")
    for layer in layers:
        _layer(contents, layer, bounds)
    _tile_matrix_set(contents, zooms, tile_size)
    _add(root, "ServiceMetadataURL", **{"xlink:href": self_url})
    body = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
