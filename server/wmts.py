"""OGC WMTS 1.0.0 capabilities (RESTful), so QGIS and GDAL add the layers by URL.

Every URL is XML-escaped (an unescaped `&` in ResourceURL is what stopped QGIS reading
TiTiler's document, titiler#936)."""

from __future__ import annotations

import re
from typing import NamedTuple
from xml.sax import saxutils

# Characters XML 1.0 cannot hold even escaped (control characters from a query text): dropped.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def escape(text: str) -> str:
    return saxutils.escape(NOT_XML.sub("", text))


def quoteattr(text: str) -> str:
    return saxutils.quoteattr(NOT_XML.sub("", text))


# OGC WebMercatorQuad / GoogleMapsCompatible at 256 px: scale denominator of zoom 0.
ZOOM0_SCALE = 559082264.0287178
ORIGIN = 20037508.3427892


class Layer(NamedTuple):
    identifier: str
    title: str
    template: str  # the ResourceURL template
    abstract: str  # what the colours mean (the layer's legend in words)
    legend_url: str  # the colour ramp as a PNG


def _tile_matrix(z: int, size: int) -> str:
    """Zoom z of WebMercatorQuad with `size`-pixel tiles: as many tiles, each pixel smaller."""
    n = 1 << z
    return (
        f"<TileMatrix><ows:Identifier>{z}</ows:Identifier>"
        f"<ScaleDenominator>{ZOOM0_SCALE / n * 256 / size!r}</ScaleDenominator>"
        f"<TopLeftCorner>{-ORIGIN} {ORIGIN}</TopLeftCorner>"
        f"<TileWidth>{size}</TileWidth><TileHeight>{size}</TileHeight>"
        f"<MatrixWidth>{n}</MatrixWidth><MatrixHeight>{n}</MatrixHeight></TileMatrix>"
    )


def _layer(layer: Layer, bounds: tuple[float, ...]) -> str:
    west, south, east, north = bounds
    identifier, title, template = layer.identifier, layer.title, layer.template
    return (
        f"<Layer><ows:Title>{escape(title)}</ows:Title><ows:Abstract>{escape(layer.abstract)}</ows:Abstract>"
        f'<ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84">'
        f"<ows:LowerCorner>{west} {south}</ows:LowerCorner><ows:UpperCorner>{east} {north}</ows:UpperCorner>"
        f"</ows:WGS84BoundingBox><ows:Identifier>{escape(identifier)}</ows:Identifier>"
        f'<Style isDefault="true"><ows:Identifier>default</ows:Identifier>'
        f'<LegendURL format="image/png" xlink:href={quoteattr(layer.legend_url)}/></Style>'
        f"<Format>image/png</Format>"
        f"<TileMatrixSetLink><TileMatrixSet>WebMercatorQuad</TileMatrixSet></TileMatrixSetLink>"
        f'<ResourceURL format="image/png" resourceType="tile" template={quoteattr(template)}/></Layer>'
    )


def capabilities(
    self_url: str, layers: list[Layer], bounds: tuple[float, ...], maxzoom: int, tile_size: int = 256
) -> str:
    """The document: the layers over WebMercatorQuad with `tile_size`-pixel tiles (the OGC
    well-known scale set GoogleMapsCompatible is declared for 256-pixel tiles only)."""
    get = (
        f'<ows:DCP><ows:HTTP><ows:Get xlink:href={quoteattr(self_url)}><ows:Constraint name="GetEncoding">'
        f"<ows:AllowedValues><ows:Value>RESTful</ows:Value></ows:AllowedValues></ows:Constraint>"
        f"</ows:Get></ows:HTTP></ows:DCP>"
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.opengis.net/wmts/1.0 '
        'http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd" version="1.0.0">'
        "<ows:ServiceIdentification><ows:Title>Soundscape tiles</ows:Title>"
        "<ows:ServiceType>OGC WMTS</ows:ServiceType><ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>"
        "</ows:ServiceIdentification>"
        f'<ows:OperationsMetadata><ows:Operation name="GetCapabilities">{get}</ows:Operation>'
        f'<ows:Operation name="GetTile">{get}</ows:Operation></ows:OperationsMetadata>'
        "<Contents>"
        + "".join(_layer(layer, bounds) for layer in layers)
        + "<TileMatrixSet><ows:Identifier>WebMercatorQuad</ows:Identifier>"
        "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>"
        + (
            "<WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>"
            if tile_size == 256
            else ""
        )
        + "".join(_tile_matrix(z, tile_size) for z in range(maxzoom + 1))
        + "</TileMatrixSet></Contents>"
        f"<ServiceMetadataURL xlink:href={quoteattr(self_url)}/></Capabilities>\n"
    )
