// The soundscape viewer: MapLibre with the server's own imagery as a basemap (when it has one), a
// heatmap, contrast or uncertainty layer whose tile URL follows the panel (query, hour and month
// or one moment everywhere, and the source from GET /metadata), a legend read from the TileJSON of
// the same parameters, a 24-hour profile of any clicked place with its values per source (its
// hour marked), numbered markers on the ten best places in view (/search in the view's bbox,
// ranked as the layer draws), a PNG of the layer in view (/collections/{layer}/map), and a colour
// scale held while the hour, moment or sound changes, so the maps compare. The whole state lives
// in the page's URL
// (#q=birdsong&hour=6&month=5&source=wildlife&layer=contrast&opacity=0.75&rescale=0,0.07&map=3/45.1/10.2),
// so a view can be bookmarked and shared.
"use strict";

const base = new URL(".", window.location.href).href.replace(/\/$/, "");
const $ = (id) => document.getElementById(id);
// q: a text query, as the page URL shows it; query: the registered id the tiles use (a text's or
// a recording's: short ASCII tile URLs that QGIS keeps intact).
// best: the bbox whose best places are marked (/search's west,south,east,north), null when none.
// datetime: one moment everywhere (each place at its own clock then) as UTC, "2024-05-01T04:00:00Z",
// or null; hour and month are null while it is set.
// rescale: the colour scale held, "min,max" (tiles, legend, PNG and link carry it), or null: the
// server's scale of each state, which differ by hour (birdsong's at 22:00 can end at a hundredth
// of its 06:00 one), so without one a night map is as bright as a dawn map.
const state = { q: null, query: null, label: "", layer: "heatmap", opacity: 0.75, hour: null, month: null,
                datetime: null, source: null, best: null, rescale: null };
const LAYERS = ["heatmap", "contrast", "uncertainty"];
const QUERY_LAYERS = ["heatmap", "contrast"];  // the layers drawn for a query
const LEGEND_TITLES = { heatmap: "match probability", contrast: "contrast (log-odds)", uncertainty: "uncertainty (S)" };
// For tests and the console: the state, and the map once it exists. <body data-heatmap=loaded>
// marks a layer drawn in full.
window.soundscape = { state };

// What the map shows, when nothing went wrong (a long text by its start: the field above holds it whole).
function describeQuery() {
  return state.query ? `query ${state.query}: ${shorten(state.label)}` : "No query yet.";
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
  $("status").classList.remove("map-error");
}

// An error of the state the map shows (its tiles or its legend failed): the next state clears it.
function setMapError(text) {
  setStatus(text, true);
  $("status").classList.add("map-error");
}

// Notices that stay in sight beside the status, one line of each kind ("link", "view", "source",
// "basemap"): a later one of a kind replaces its earlier one, not the others.
const notices = new Map();

function setNotice(kind, text) {
  notices.set(kind, text);
  showNotices();
}

function clearNotice(kind) {
  notices.delete(kind);
  showNotices();
}

function showNotices() {
  $("notice").textContent = [...notices.values()].join("\n");
  $("notice").hidden = notices.size === 0;
}

// A user's or a link's text as a message quotes it: at most `length` characters.
const shorten = (text, length = 60) => (text.length > length ? `${text.slice(0, length - 1)}…` : text);

// A server's text (TileJSON's attribution: the store's credit as precompute was given it) as the
// HTML MapLibre's credit line takes, so it shows as written, "<" and "&" included.
function asHtmlText(text) {
  const element = document.createElement("span");
  element.textContent = text || "";
  return element.innerHTML;
}

// --- The state in the URL ---------------------------------------------------------------------

// A shared bbox (west,south,east,north) as /search takes it, or null: out-of-range boxes are
// ignored as other hand-edited values are.
function boxIn(text) {
  const box = (text || "").split(",").map((v) => (/^-?\d+(\.\d+)?$/.test(v) ? Number(v) : NaN));
  const [west, south, east, north] = box;
  const ok = box.length === 4 && box.every(Number.isFinite) && Math.abs(west) <= 180 && Math.abs(east) <= 180
    && west !== east && south >= -90 && north <= 90 && south < north;
  return ok ? text : null;
}

function intIn(text, lo, hi) {
  const value = /^\d+$/.test(text || "") ? Number(text) : NaN;
  return value >= lo && value <= hi ? value : null;
}

function opacityIn(text) {
  const value = /^\d*\.?\d+$/.test(text) ? Number(text) : NaN;
  return value >= 0 && value <= 1 ? value : null;
}

// A colour scale "min,max" as the server takes it (finite, within -1000..1000, max at least 1e-6
// above min), or null.
function scaleIn(text) {
  const ends = text.split(",").map((v) => (/^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(v) ? Number(v) : NaN));
  const [lo, hi] = ends;
  const ok = ends.length === 2 && ends.every((v) => Number.isFinite(v) && Math.abs(v) <= 1000) && hi - lo >= 1e-6;
  return ok ? `${lo},${hi}` : null;
}

// A date and time as RFC 3339 writes it (the server also takes a space for the T). At an offset it
// is an instant, read as {datetime} in UTC; without one it is every place's own clock, which the
// server reads as that {hour, month}. Null for anything else, or a year outside the server's 2..9998.
// A link's "+" reads as a space unless written %2B, so a space before an offset is its "+".
const MOMENT = /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?([Zz]|[+\- ]\d{2}:\d{2})?$/;
function momentIn(text) {
  const parts = MOMENT.exec(text);
  if (!parts) return null;
  const [year, month, day, hour, minute, second] = parts.slice(1, 7).map((v) => Number(v || 0));
  const date = new Date(Date.UTC(2000, 0, 1, hour, minute, second));
  date.setUTCFullYear(year, month - 1, day);  // Date.UTC reads the years 0..99 as 1900..1999
  const offset = parts[7] && /^[+\- ]/.test(parts[7]) ? parts[7].replace(" ", "+") : "+00:00";
  const [offsetHours, offsetMinutes] = offset.slice(1).split(":").map(Number);
  const real = date.getUTCMonth() === month - 1 && date.getUTCDate() === day && hour <= 23 && minute <= 59
    && second <= 59 && offsetHours <= 23 && offsetMinutes <= 59 && year >= 2 && year <= 9998;
  if (!real) return null;
  if (!parts[7]) return { hour, month };
  date.setTime(date.getTime() - Number(`${offset[0]}1`) * (offsetHours * 60 + offsetMinutes) * 60_000);
  return { datetime: utcText(date) };
}

// A moment as the link and the requests write it: UTC to the second.
const utcText = (date) => date.toISOString().replace(/\.\d{3}Z$/, "Z");

// A shared map=zoom/lat/lon as MapLibre's view, or null.
function viewIn(text) {
  const [zoom, lat, lon] = text.split("/").map((v) => (/^-?\d+(\.\d+)?$/.test(v) ? Number(v) : NaN));
  const ok = text.split("/").length === 3 && [zoom, lat, lon].every(Number.isFinite)
    && Math.abs(lat) <= 85.06 && Math.abs(lon) <= 180;
  return ok ? { zoom: Math.min(Math.max(zoom, 0), 24), center: [lon, lat] } : null;
}

// What each checked parameter of a link takes: its reader (the value, or null when it is refused)
// and, for the notice, what it takes in words.
const LINK_PARAMS = {
  hour: [(text) => intIn(text, 0, 23), "a whole hour 0 to 23"],
  month: [(text) => intIn(text, 1, 12), "a month 1 to 12"],
  datetime: [momentIn, "a date and time as RFC 3339 writes it, e.g. 2024-05-01T04:00:00Z"],
  layer: [(text) => (LAYERS.includes(text) ? text : null), LAYERS.join(", ")],
  opacity: [opacityIn, "a number 0 to 1"],
  rescale: [scaleIn, "min,max: two numbers within -1000..1000, max above min"],
  best: [boxIn, "west,south,east,north"],
  map: [viewIn, "zoom/lat/lon"],
};

// Every key a link holds, and a key as a slip would leave it (as the server reads parameter names,
// server/params.py `slips`): `Hour`, ` hour` and `ho ur` are `hour`, and `hours` is a slip of it,
// so a hand-typed `Hour=6` is said, not dropped silently.
const LINK_KEYS = ["q", "query", "source", ...Object.keys(LINK_PARAMS)];
function spelling(key) {
  return key.toLowerCase().replace(/[\s_-]+/g, "");
}
function slips(key) {
  const folded = spelling(key);
  return [folded, `${folded}s`, ...(folded.endsWith("s") && folded.length > 1 ? [folded.slice(0, -1)] : [])];
}

// The state a shared URL carries, in the hash (or, for links like /?query=<id>, the query string;
// the hash wins). A value out of range is left out, so a hand-edited URL still opens a map, and
// `refused` says which and what each takes (the page's notice); the source is checked against the
// server's once GET /metadata answers, and layer is null when absent. A `datetime` names the
// moment, so an hour or month beside it is left out (the server refuses the two together); one
// without an offset is the hour and month it reads.
function readUrlState() {
  const params = new URLSearchParams(window.location.search);
  for (const [key, value] of new URLSearchParams(window.location.hash.slice(1))) params.set(key, value);
  const refused = [];
  const read = {};
  for (const [key, [reader, takes]] of Object.entries(LINK_PARAMS)) {
    const text = params.get(key);
    read[key] = text ? reader(text) : null;
    if (text && read[key] === null) refused.push(`${key}=${shorten(text, 30)} (it takes ${takes})`);
  }
  for (const [key, value] of params) {
    const meant = LINK_KEYS.find((known) => known !== key && slips(known).includes(spelling(key)));
    if (meant && !LINK_KEYS.includes(key)) refused.push(`${shorten(key, 20)}=${shorten(value, 30)} (did you mean ${meant}?)`);
  }
  const moment = read.datetime || {};
  if (read.datetime) {
    for (const key of ["hour", "month"]) {
      if (params.get(key)) refused.push(`${key}=${shorten(params.get(key), 30)} (datetime= gives the moment)`);
    }
  }
  return {
    q: (params.get("q") || "").trim() || null,
    query: params.get("q") ? null : params.get("query"),
    hour: read.datetime ? (moment.hour ?? null) : read.hour,
    month: read.datetime ? (moment.month ?? null) : read.month,
    datetime: moment.datetime ?? null,
    source: params.get("source") || null,
    layer: read.layer,
    opacity: read.opacity ?? 0.75,
    rescale: read.rescale,
    best: read.best,
    view: read.map,
    mapText: read.map ? params.get("map") : null,
    refused,
  };
}

// `key=value&...` with readable slashes, commas, colons and spaces (map=3/45.1/10.2,
// best=-10,35,30,60, datetime=2024-05-01T04:00:00Z, q=birds+at+dawn).
function formatParams(entries) {
  return entries.map(([key, value]) => `${key}=${encodeURIComponent(value).replace(/%2F/g, "/").replace(/%2C/g, ",")
    .replace(/%3A/g, ":").replace(/%20/g, "+")}`).join("&");
}

function writeUrlState(map) {
  const entries = [];
  if (state.q) entries.push(["q", state.q]);
  else if (state.query) entries.push(["query", state.query]);
  if (state.hour !== null) entries.push(["hour", state.hour]);
  if (state.month !== null) entries.push(["month", state.month]);
  if (state.datetime !== null) entries.push(["datetime", state.datetime]);
  if (state.source !== null) entries.push(["source", state.source]);
  entries.push(["layer", state.layer], ["opacity", state.opacity]);
  if (state.rescale !== null) entries.push(["rescale", state.rescale]);
  if (state.best) entries.push(["best", state.best]);
  if (map) {
    const { lng, lat } = map.getCenter();
    entries.push(["map", `${map.getZoom().toFixed(2)}/${lat.toFixed(4)}/${wrapLng(lng).toFixed(4)}`]);
  } else if (window.location.hash.includes("map=")) {
    entries.push(["map", new URLSearchParams(window.location.hash.slice(1)).get("map")]);
  }
  history.replaceState(null, "", `${window.location.pathname}#${formatParams(entries)}`);
}

// --- Requests ---------------------------------------------------------------------------------

// What to look for and when, as request parameters (what `/point` takes).
function queryParams(withQuery = true) {
  const params = new URLSearchParams();
  if (withQuery && state.query) params.set("query", state.query);
  if (state.hour !== null) params.set("hour", state.hour);
  if (state.month !== null) params.set("month", state.month);
  if (state.datetime !== null) params.set("datetime", state.datetime);
  if (state.source !== null) params.set("source", state.source);
  return params;
}

// The parameters of the current layer's tiles; its TileJSON takes the same.
function tileParams() {
  const params = queryParams(QUERY_LAYERS.includes(state.layer));
  params.set("layer", state.layer);
  if (state.rescale !== null) params.set("rescale", state.rescale);
  return params;
}

// The tile URL of the current state: what "Copy XYZ URL" copies, and with `ratio` "{ratio}" what
// the map draws (MapLibre writes `@2x` there on a high-DPI screen, whose 256 px tiles it would
// draw blurred, and nothing elsewhere). Unless a scale is held, no rescale: the server picks the
// colour scale of the query and metadata, and TileJSON reports it.
function tileUrl(ratio = "") {
  return `${base}/tiles/{z}/{x}/{y}${ratio}.png?${tileParams()}`;
}

function hasLayer() {
  return state.layer === "uncertainty" || Boolean(state.query);
}

// The server's one-sentence `detail` of an error response, else its status line.
async function errorDetail(response) {
  const body = await response.json().catch(() => ({}));
  const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
  return `${response.status}: ${detail === "{}" ? response.statusText : detail}`;
}

// A refused response as an Error of its detail, with its status.
async function refusal(response) {
  const error = new Error(await errorDetail(response));
  error.status = response.status;
  return error;
}

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  if (!response.ok) throw await refusal(response);
  return response.json();
}

// Refusals that pass by themselves (a busy server, a rate limit, a gateway): asked again later,
// the same tiles may come.
const TRANSIENT = new Set([408, 429, 502, 503, 504]);

// The detail of a failed tile: MapLibre's AJAXError carries the response body.
async function tileErrorDetail(error) {
  if (error && error.status && error.body) {
    return errorDetail(new Response(error.body, { status: error.status, statusText: error.statusText }));
  }
  return (error && error.message) || "unknown error";
}

// --- The map ----------------------------------------------------------------------------------

// Padding that keeps the store's extent clear of the panel (on the left, or a sheet at the bottom).
function clearOfPanel() {
  const panel = $("panel").getBoundingClientRect(), map = $("map").getBoundingClientRect();
  const bottomSheet = panel.left <= map.left && panel.right >= map.right;
  return { top: 20, right: 20, left: bottomSheet ? 20 : panel.right + 20, bottom: bottomSheet ? map.bottom - panel.top + 20 : 20 };
}

// A longitude in -180..180: a map across the antimeridian draws world copies, where the map's
// own longitudes run beyond 180.
const wrapLng = (lng) => ((((lng + 180) % 360) + 360) % 360) - 180;

// Where the store's cells are. TileJSON's bounds never wrap, so for a store across the antimeridian
// they span every longitude; its `footprint` (not TileJSON: west > east there) gives where the map
// opens, west..east + 360 drawn over world copies, and the boxes its tiles are asked for in, either
// side of 180 degrees (a source's bounds never wrap either). Otherwise the bounds, one world, one box.
// `copies`: whether the map draws world copies, for a store across the antimeridian or around the
// whole world (any centre can be shown, 179 E as well as 0); a map without them keeps its view
// within -180..180, one world filling the window.
function storeExtent(info) {
  const fp = info.footprint;
  const wraps = Array.isArray(fp) && fp.length === 4 && fp.every(Number.isFinite) && fp[0] > fp[2];
  const [west, south, east, north] = wraps ? [fp[0], fp[1], fp[2] + 360, fp[3]] : info.bounds;
  const boxes = wraps ? [[fp[0], south, 180, north], [-180, south, fp[2], north]] : [info.bounds];
  const aroundTheWorld = info.bounds[2] - info.bounds[0] >= 360;
  return { bounds: [[west, south], [east, north]], wraps, boxes, copies: wraps || aroundTheWorld };
}

// A shared view the map could not show as it is (MapLibre moves a view beyond its zooms, beyond
// Web Mercator's latitudes, or, without world copies, beyond -180..180 or wider than one world)
// is said in the notice, with the view shown and why: the link's hash is rewritten to it.
function tellMovedView(map, text, copies) {
  const [zoom, lat, lon] = text.split("/").map(Number);
  const { lng, lat: shownLat } = map.getCenter(), shownZoom = map.getZoom();
  const zoomMoved = Math.abs(shownZoom - zoom) >= 0.005;  // as the URL writes them
  const centreMoved = Math.abs(shownLat - lat) >= 0.00005 || Math.abs(wrapLng(lng - lon)) >= 0.00005;
  if (!zoomMoved && !centreMoved) return;
  const why = [];
  if (zoom > shownZoom) why.push(`the map zooms in no further than ${map.getMaxZoom()}`);
  else if (zoom < 0) why.push("the map zooms out no further than 0");
  else if (zoom < shownZoom) {
    why.push(`at this window's size it zooms out no further than ${shownZoom.toFixed(2)}, the world ` +
             (copies ? "filling its height" : "filling it (this store does not go around the world)"));
  }
  if (centreMoved) {
    why.push(copies ? "its view stays within Web Mercator's latitudes (85.05 N to 85.05 S)"
      : "its view stays within one world, 180 W to 180 E and 85.05 N to 85.05 S (this store does not go around the world)");
  }
  const shown = `${shownZoom.toFixed(2)}/${shownLat.toFixed(4)}/${wrapLng(lng).toFixed(4)}`;
  setNotice("view", `the link's view map=${shorten(text, 30)} is shown as map=${shown}: ${why.join("; ")}`);
}

// The map's raster layers by name ("soundscape", "imagery"), each drawn as one source and layer
// per box of the store's cells (ids name, name-2): the map asks for no tile beyond them.
const rasters = {};
window.soundscape.rasters = rasters;

function addRaster(map, name, boxes, source, paint, before) {
  rasters[name] = boxes.map((bounds, i) => {
    const id = i ? `${name}-${i + 1}` : name;
    map.addSource(id, { type: "raster", tileSize: 256, ...source, bounds });
    map.addLayer({ id, type: "raster", source: id, paint }, before);
    return id;
  });
}

function removeRaster(map, name) {
  (rasters[name] || []).forEach((id) => { map.removeLayer(id); map.removeSource(id); });
  delete rasters[name];
}

const rasterOf = (sourceId) => Object.keys(rasters).find((name) => rasters[name].includes(sourceId));

// The XYZ tile under a point, for probing the basemap where the map looks first.
function tileAt(lngLat, zoom) {
  const n = 2 ** zoom, lat = (lngLat.lat * Math.PI) / 180;
  const clamp = (v) => Math.min(n - 1, Math.max(0, Math.floor(v)));
  return [clamp(((wrapLng(lngLat.lng) + 180) / 360) * n),
          clamp(((1 - Math.log(Math.tan(lat) + 1 / Math.cos(lat)) / Math.PI) / 2) * n)];
}

const basemapFailed = (detail) => setNotice("basemap", `basemap unavailable: ${detail}; the heatmap still works`);

// The store's imagery under the heatmap. A server without imagery answers 404 with the reason:
// the map then goes on without a basemap and says so. Any other failure may pass (a busy server,
// the network): it is said, and the basemap is added all the same, for its tiles to come later.
async function addBasemap(map, info, boxes) {
  const zoom = Math.min(info.maxzoom, Math.max(0, Math.floor(map.getZoom())));
  const [x, y] = tileAt(map.getCenter(), zoom);
  try {
    const response = await fetch(`${base}/basemap/${zoom}/${x}/${y}.webp`);
    if (!response.ok) throw await refusal(response);
  } catch (error) {
    basemapFailed(error.message);
    if (error.status === 404) return;
  }
  addRaster(map, "imagery", boxes, { tiles: [`${base}/basemap/{z}/{x}/{y}{ratio}.webp`], maxzoom: info.maxzoom,
                                     attribution: asHtmlText(info.attribution) },
            {}, map.getLayer("soundscape") ? "soundscape" : undefined);
}

// The map's credit line: at the bottom right, or at phone width (where the panel is a sheet along
// the bottom, over that corner) compact at the top left; it moves when the window crosses that width.
function placeCredits(map) {
  const phone = window.matchMedia("(max-width: 600px)");
  let control = null;
  const place = () => {
    if (control) map.removeControl(control);
    control = new maplibregl.AttributionControl({ compact: phone.matches });
    map.addControl(control, phone.matches ? "top-left" : "bottom-right");
  };
  place();
  phone.addEventListener("change", place);
}

async function main() {
  const initial = readUrlState();
  // What source and layer take, and what each means: the source control's options.
  const metadata = await fetchJson(`${base}/metadata`);
  const sources = metadata.source.values.map((v) => v.value);
  Object.assign(state, { q: initial.q, query: initial.query, hour: initial.hour, month: initial.month,
                         datetime: initial.datetime, source: sources.includes(initial.source) ? initial.source : null,
                         layer: initial.layer || metadata.layer.default, opacity: initial.opacity,
                         rescale: initial.rescale });
  if (initial.refused.length) setNotice("link", `left out of the link: ${initial.refused.join("; ")}`);
  if (initial.source !== null && state.source === null) {
    setNotice("source", `source "${shorten(initial.source, 30)}" is unknown to this server (it knows ${sources.join(", ")}); ` +
              "showing an unknown source");
  }
  fillSources(metadata.source);
  showControls();
  wireLegendImage();

  // The store's extent, in every TileJSON; this one is also the legend of the uncertainty layer
  // with no hour, month or source, which is not asked for again.
  const extentUrl = `${base}/tilejson.json?layer=uncertainty`;
  const info = await fetchJson(extentUrl);
  const extent = storeExtent(info);
  const view = initial.view || { bounds: extent.bounds, fitBoundsOptions: { padding: clearOfPanel() } };
  // No source in the style: the map loads whatever the server lacks; the basemap comes after.
  const map = new maplibregl.Map({ container: "map", style: { version: 8, sources: {}, layers: [] },
                                   ...view, renderWorldCopies: extent.copies, attributionControl: false });
  window.soundscape.map = map;
  if (initial.mapText) tellMovedView(map, initial.mapText, extent.copies);
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
  placeCredits(map);
  let ready = false, renderedUrl = null, legendSeq = 0;
  // Set when the layer went for a refusal that passes (busy, rate limited, the network): the
  // next pan or zoom draws the same state again.
  let retryOnMove = false;

  function redraw() {
    $("copy").disabled = !hasLayer();
    $("best").disabled = !state.query;
    $("scale-view").disabled = !state.query;  // /statistics reads a query's cells
    showMapImage(map);
    if (!ready) return;
    if (!hasLayer()) return hideLayer();
    const url = tileUrl("{ratio}");
    if (url !== renderedUrl) {  // else drawn before it was hidden: its tiles are still there
      renderedUrl = url;
      delete document.body.dataset.heatmap;
      (rasters.soundscape || []).forEach((id) => map.getSource(id).setTiles([url]));
    }
    if (!rasters.soundscape) {
      // TileJSON's maxzoom, the store's last level: MapLibre scales it up past there
      // rather than asking for tiles the store does not have.
      addRaster(map, "soundscape", extent.boxes, { tiles: [url], minzoom: 0, maxzoom: info.maxzoom,
                                                   attribution: asHtmlText(info.attribution) },
                { "raster-opacity": state.opacity, "raster-resampling": "linear", "raster-fade-duration": 0 });
    }
    rasters.soundscape.forEach((id) => map.setLayoutProperty(id, "visibility", "visible"));
  }

  // No layer drawn for want of a query: its tiles are kept for when it has one again.
  function hideLayer() {
    (rasters.soundscape || []).forEach((id) => map.setLayoutProperty(id, "visibility", "none"));
    delete document.body.dataset.heatmap;
  }

  // The legend of exactly what the map draws: the TileJSON of the tiles' parameters.
  async function refreshLegend() {
    const seq = ++legendSeq;
    if (!hasLayer()) {
      $("legend").hidden = true;
      return;
    }
    try {
      const url = `${base}/tilejson.json?${tileParams()}`;
      const tilejson = url === extentUrl ? info : await fetchJson(url);
      if (seq !== legendSeq) return;
      showLegend(tilejson);
    } catch (error) {
      if (seq !== legendSeq) return;
      $("legend").hidden = true;  // it was the state before's
      setMapError(`cannot map this: ${error.message}`);
    }
  }

  function changed() {
    clearPlaces();  // they answered the previous query or metadata
    recoloured();
  }

  // Other colours for the same values (a scale held or let go): the places marked still hold.
  function recoloured() {
    writeUrlState(ready ? map : null);
    drawAgain();
  }

  // The state's layer and legend drawn (again): an error of the map before is no longer shown.
  function drawAgain() {
    retryOnMove = false;
    if ($("status").classList.contains("map-error")) setStatus(describeQuery());  // new chance
    redraw();
    refreshLegend();
  }

  wirePanel(changed, recoloured, (opacity) => {
    (rasters.soundscape || []).forEach((id) => map.setPaintProperty(id, "raster-opacity", opacity));
  });

  map.on("idle", () => {
    if (hasLayer() && renderedUrl && rasters.soundscape.every((id) => map.isSourceLoaded(id))) {
      document.body.dataset.heatmap = "loaded";
    }
  });
  // Whether basemap tiles loaded, and whether any failed, since the view last changed: its notice
  // goes once the map is drawn with tiles that loaded and none that failed, and stays while they
  // fail (a failure may come after the map went idle, with nothing left to draw).
  const basemapTiles = { loaded: false, failed: false };
  map.on("movestart", () => Object.assign(basemapTiles, { loaded: false, failed: false }));
  map.on("sourcedata", (event) => {
    if (event.tile && rasterOf(event.sourceId) === "imagery") basemapTiles.loaded = true;
  });
  map.on("idle", () => {
    if (basemapTiles.loaded && !basemapTiles.failed) clearNotice("basemap");
  });
  map.on("error", async (event) => {
    const raster = rasterOf(event.sourceId);  // before the wait: the first failed tile removes the source
    if (raster === "imagery") {
      basemapTiles.failed = true;
      // MapLibre draws no frame for a failed tile: were it the last to come, the map would not go
      // idle, and the layer over it would never be marked drawn.
      map.triggerRepaint();
    }
    const status = event.error && event.error.status;
    const detail = await tileErrorDetail(event.error);
    if (raster === "imagery") basemapFailed(detail);
    else if (raster === "soundscape") {
      // The tiles of the state before would stay drawn where this state's failed: the layer goes,
      // with its legend, until the state changes (new tiles, new chance). Removed, not hidden:
      // MapLibre 5.24 fails on setTiles() over tiles that failed while their layer was hidden.
      removeRaster(map, "soundscape");
      renderedUrl = null;
      delete document.body.dataset.heatmap;
      $("legend").hidden = true;
      legendSeq++;  // a legend of this state still on its way would show again over no layer
      retryOnMove = !status || TRANSIENT.has(status);
      setMapError(`tiles failed: ${detail}; the layer is hidden${retryOnMove ? " until the map moves" : ""}`);
    }
    else setStatus(`map: ${detail}`, true);
  });
  map.on("moveend", () => showMapImage(map));  // a resize ends in one too
  map.on("moveend", () => {
    if (!ready) return;
    writeUrlState(map);
    retellBest(map);
    if (retryOnMove) drawAgain();
  });
  map.on("click", (event) => showProfile(map, event.lngLat));
  // From the keyboard (the map focused; arrow keys pan it, + and - zoom), Enter shows the profile
  // of the place at the map's centre, as a click there would.
  const canvas = map.getCanvas();
  canvas.setAttribute("aria-label", "map: arrow keys pan, + and - zoom, Enter shows the place at the centre");
  canvas.addEventListener("keydown", (event) => {
    if (event.key === "Enter") showProfile(map, map.getCenter());
  });
  $("best").addEventListener("click", () => showBest(map));

  const loaded = new Promise((resolve) => map.on("load", resolve));
  const restored = restoreQuery();
  await loaded;
  ready = true;
  addBasemap(map, info, extent.boxes);
  await restored;
  changed();
  if (initial.best && state.query) await showBest(map, initial.best);  // a shared link's markers
}

// POST /queries: a text or a recording becomes the id the tiles use. If the server refuses it (or
// cannot be reached) the reason is shown and the state holds no query: the previous one's map,
// legend and link would read as the answer to this one. Only the latest ask sets the state (an
// earlier one answering after it is dropped); false for one that was not the latest.
let registrations = 0;

async function register(options, what) {
  const ask = ++registrations;
  setStatus(`registering ${what}…`);
  let query, failure;
  try {
    query = await fetchJson(`${base}/queries`, { method: "POST", ...options });
  } catch (error) {
    failure = error;
  }
  if (ask !== registrations) return false;
  if (failure) {
    Object.assign(state, { q: null, query: null, label: "" });
    setStatus(`could not register ${what}: ${failure.message}`, true);
  } else {
    Object.assign(state, { q: query.text || null, query: query.id,
                           label: query.text || `recording (${query.duration_s} s)` });
    setStatus(describeQuery());
  }
  return true;
}

function registerText(text) {
  const body = JSON.stringify({ text });
  return register({ headers: { "Content-Type": "application/json" }, body }, `"${shorten(text)}"`);
}

// A shared `q=` is registered again (the same text gets the same id); a shared `query=<id>` is
// looked up: a server that does not know it says so.
async function restoreQuery() {
  if (state.q) return registerText(state.q);
  if (!state.query) return;
  const id = state.query;
  try {
    const query = await fetchJson(`${base}/queries/${encodeURIComponent(id)}`);
    state.q = query.text || null;  // a registered text is shared as its text from now on
    $("text").value = state.q || "";
    state.label = query.text || `recording (${query.duration_s} s)`;
    setStatus(describeQuery());
  } catch (error) {
    if (error.status === 404) {
      state.query = null;
      setStatus(`query ${id}: this saved query is unknown to this server; map the sound again`, true);
      return;
    }
    // Its text or length did not come (a busy server, the network): the query may still be
    // there. Its tiles are asked for, and the link keeps it, so a reload tries again.
    state.label = `saved query ${id}`;
    setStatus(`could not load saved query ${id}: ${error.message}; the link keeps it (reload to try again)`, true);
  }
}

// --- The panel --------------------------------------------------------------------------------

// What each source means (GET /metadata), shown under the source control when one is chosen.
let sourceDescriptions = {};

// The source control: the unknown source, then the bundle's, each with what it means.
function fillSources(source) {
  $("source").options[0].title = source.unknown;
  for (const { value, description } of source.values) {
    const option = new Option(value, value);
    option.title = description || "";
    $("source").add(option);
  }
  sourceDescriptions = Object.fromEntries(source.values.map((v) => [v.value, v.description || ""]));
}

// The controls show the state (after restoring it from the URL). While one moment is mapped, the
// hour and month controls rest: each place's clock gives them.
function showControls() {
  $("text").value = state.q || "";
  const moment = state.datetime !== null;
  for (const name of ["hour", "month"]) {
    const value = state[name];
    $(`${name}-any`).checked = value === null;
    $(`${name}-any`).disabled = moment;
    $(name).disabled = value === null;
    if (value !== null) $(name).value = value;
    $(`${name}-out`).textContent = value === null ? "" : (name === "hour" ? `${value}:00` : String(value));
  }
  $("moment-on").checked = moment;
  for (const id of ["moment", "moment-back", "moment-forward", "moment-play"]) $(id).disabled = !moment;
  if (moment) $("moment").value = state.datetime.slice(0, 19);  // its UTC clock, as the field takes it
  $("moment-desc").hidden = !moment;
  $("source").value = state.source || "";
  $("source-desc").textContent = (state.source && sourceDescriptions[state.source]) || "";
  for (const radio of document.querySelectorAll("input[name=layer]")) radio.checked = radio.value === state.layer;
  $("opacity").value = state.opacity;
  $("scale-hold").checked = state.rescale !== null;
}

// A slider's steps are mapped once it rests, this long after its last: each step of a drag, or of
// an arrow key held down, asked for its own tiles and legend.
const SLIDER_REST_MS = 250;

function wirePanel(apply, recolour, setOpacity) {
  let resting = null;
  const changed = () => { clearTimeout(resting); apply(); };  // with any slider's pending steps
  const changedSoon = () => { clearTimeout(resting); resting = setTimeout(apply, SLIDER_REST_MS); };
  $("panel-toggle").addEventListener("click", () => {
    const collapsed = $("panel").classList.toggle("collapsed");
    $("panel-body").hidden = collapsed;
    $("panel-toggle").setAttribute("aria-expanded", String(!collapsed));
    $("panel-toggle").textContent = collapsed ? "Show" : "Hide";
    $("panel-toggle").title = collapsed ? "show the panel" : "hide the panel";
  });
  $("text-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) return setStatus("type a sound first, e.g. birdsong", true);
    $("audio").value = "";  // the text is the question now
    if (await registerText(text)) changed();
  });
  $("audio").addEventListener("change", async () => {
    const file = $("audio").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    $("text").value = "";  // the recording is the question now
    if (!(await register({ body: form }, shorten(file.name)))) return;
    if (!state.query) $("audio").value = "";  // refused: choosing the same file again asks again
    changed();
  });
  for (const name of ["hour", "month"]) {
    const slider = $(name), any = $(`${name}-any`);
    const sync = () => {
      state[name] = any.checked ? null : Number(slider.value);
      showControls();
    };
    slider.addEventListener("input", () => {
      sync();
      changedSoon();
    });
    // Unticking "any" enables the slider, which comes before the box on the page: focus moves to
    // it, so a keyboard user sets the hour with the arrow keys next instead of tabbing past it.
    any.addEventListener("change", () => {
      sync();
      changed();
      if (!any.checked) slider.focus();
    });
  }
  // One moment everywhere: ticking it maps the moment in the field (this minute if it is empty),
  // "now" maps this minute; the field is read as UTC. Unticked, the map is of any hour and month.
  const mapMoment = (datetime) => {
    Object.assign(state, { datetime, hour: null, month: null });
    showControls();
    changed();
  };
  $("moment-on").addEventListener("change", () => {
    const typed = momentIn(`${$("moment").value}Z`);
    mapMoment($("moment-on").checked ? (typed && typed.datetime) || nowText() : null);
  });
  $("moment").addEventListener("change", () => {
    const typed = momentIn(`${$("moment").value}Z`);
    if (typed) mapMoment(typed.datetime);
  });
  $("now").addEventListener("click", () => mapMoment(nowText()));
  // An hour earlier or later: the map's day, step by step (dawn moving west over the world).
  const step = (hours) => {
    const moved = new Date(Date.parse(state.datetime) + hours * 3_600_000);
    if (moved.getUTCFullYear() >= 2 && moved.getUTCFullYear() <= 9998) mapMoment(utcText(moved));
  };
  $("moment-back").addEventListener("click", () => step(-1));
  $("moment-forward").addEventListener("click", () => step(1));
  // Played, the hours compare: a scale is held first (the day's, unless one is held already).
  $("moment-play").addEventListener("click", async () => {
    if (playing) return stopPlaying();
    $("moment-play").disabled = true;  // while the day's scale is read: one play at a time
    const held = state.rescale !== null || (await holdDayScale(recolour));
    showControls();
    if (held && state.datetime !== null) play(() => step(1));
  });
  $("source").addEventListener("change", () => {
    state.source = $("source").value || null;
    showControls();
    changed();
  });
  // Another layer is another quantity: a scale held for one is let go.
  for (const radio of document.querySelectorAll("input[name=layer]")) {
    radio.addEventListener("change", () => {
      Object.assign(state, { layer: radio.value, rescale: null });
      showControls();
      changed();
    });
  }
  $("scale-hold").addEventListener("change", () => {
    state.rescale = $("scale-hold").checked ? shownScale : null;
    recolour();
  });
  $("scale-day").addEventListener("click", () => holdDayScale(recolour));
  $("scale-view").addEventListener("click", () => {
    const map = window.soundscape.map;
    holdScale(() => viewScale(map), "this view's", "its colours spread over what is in view", recolour);
  });
  $("opacity").addEventListener("input", () => {
    state.opacity = Number($("opacity").value);
    setOpacity(state.opacity);
    writeUrlState(window.soundscape.map);
  });
  $("copy").addEventListener("click", async () => {
    const url = tileUrl();
    try {
      await navigator.clipboard.writeText(url);
      setStatus("XYZ URL copied: paste it into QGIS (XYZ Tiles) or Leaflet.");
    } catch {
      window.prompt("XYZ tile URL", url);
    }
  });
  for (const id of ["map-image", "map-values"]) $(id).addEventListener("click", downloadMapImage);
}

// The colour scale that spans the day, "min,max": the widest of the server's scales of its 24
// hours (each its own 2nd to 98th percentile) and of the state's own, so no hour's map is clipped
// beyond its own scale. At one moment, the 24 hours from it (what "play" steps through); else each
// hour of the day at the month and source. Asked 4 at a time; an Error when one is refused.
async function dayScale() {
  const own = tileParams();
  own.delete("rescale");
  const asked = new Set([own.toString()]);
  for (let hour = 0; hour < 24; hour++) {
    const params = new URLSearchParams(own);
    if (state.datetime !== null) params.set("datetime", utcText(new Date(Date.parse(state.datetime) + hour * 3_600_000)));
    else params.set("hour", hour);
    asked.add(params.toString());
  }
  const queue = [...asked], ends = [];
  const askNext = async () => {
    while (queue.length) ends.push((await fetchJson(`${base}/tilejson.json?${queue.shift()}`)).rescale);
  };
  await Promise.all([1, 2, 3, 4].map(askNext));
  return `${Math.min(...ends.map((e) => e[0]))},${Math.max(...ends.map((e) => e[1]))}`;
}

// The colour scale of what is in view, "min,max": the 2nd to 98th percentile of the layer's values
// over the cells centred in the view (GET /statistics with the view's bbox), as the server's own
// scales are over its sample of the world, rounded as it rounds them (server/engine.py, round_scale).
async function viewScale(map) {
  const params = queryParams();
  params.set("bbox", viewBox(map.getBounds()));
  const { layers } = await fetchJson(`${base}/statistics?${params}`);
  return roundScale(layers[state.layer].percentile_2, layers[state.layer].percentile_98);
}

// Ends rounded outwards to 3 significant digits of their span: readable in the link, and no value
// moves inside the scale.
function roundScale(lo, hi) {
  const step = 10 ** (Math.floor(Math.log10(Math.max(hi - lo, Math.abs(hi) * 1e-6, 1e-12))) - 2);
  const low = Math.floor(lo / step) * step, high = Math.max(Math.ceil(hi / step) * step, low + step);
  return `${Number(low.toPrecision(6))},${Number(high.toPrecision(6))}`;
}

// Holds the scale `read` finds ("the day's", "this view's") and draws it (`apply`); false when it
// could not be read, or the state changed meanwhile (the scale would be another state's).
async function holdScale(read, which, why, apply) {
  const asked = tileParams().toString();
  setStatus(`reading ${which} colour scale…`);
  let scale;
  try {
    scale = await read();
  } catch (error) {
    setStatus(`no colour scale of ${which.replace(/'s$/, "")}: ${error.message}`, true);
    return false;
  }
  if (tileParams().toString() !== asked) return false;
  state.rescale = scale;
  showControls();
  apply();
  setStatus(`${describeQuery()}; colours held at ${which} scale, ${scale.replace(",", " to ")}, ${why}`);
  return true;
}

const holdDayScale = (apply) => holdScale(dayScale, "the day's", "so its hours compare", apply);

// "Play the day": an hour later once the map has shown the last hour's tiles for PLAY_HOLD_MS,
// for a day (24 steps), or until stopped, the moment unticked or the map failed. It waits for
// each hour's tiles, so a slow server slows it rather than queueing hours.
const PLAY_HOLD_MS = 1200, PLAY_STEPS = 24;
let playing = null;

function play(stepOn) {
  playing = { steps: 0, shownSince: null, timer: setInterval(() => playOn(stepOn), 200) };
  $("moment-play").textContent = "■ stop";
  $("moment-play").setAttribute("aria-pressed", "true");
}

function playOn(stepOn) {
  if (state.datetime === null || $("status").classList.contains("map-error")) return stopPlaying();
  if (document.body.dataset.heatmap !== "loaded") {
    playing.shownSince = null;
    return;
  }
  playing.shownSince ??= Date.now();
  if (Date.now() - playing.shownSince < PLAY_HOLD_MS) return;
  if (playing.steps++ === PLAY_STEPS) return stopPlaying();
  playing.shownSince = null;
  stepOn();
}

function stopPlaying() {
  clearInterval(playing.timer);
  playing = null;
  $("moment-play").textContent = "▶ play";
  $("moment-play").setAttribute("aria-pressed", "false");
}

// This minute in UTC, as a moment to map.
function nowText() {
  const now = new Date();
  now.setUTCSeconds(0, 0);
  return utcText(now);
}

// "PNG of this view" (or its GeoTIFF) fetched first and saved from memory: followed as a plain
// link, a refusal (a rate limit, a query too long) was saved under the file's name as its JSON; it
// is said instead. The link keeps its href, to copy or open in a tab.
async function downloadMapImage(event) {
  const link = event.currentTarget;
  if (!link.href) return;
  event.preventDefault();
  let image;
  try {
    const response = await fetch(link.href);
    if (!response.ok) throw await refusal(response);
    image = URL.createObjectURL(await response.blob());
  } catch (error) {
    return setStatus(`${link.textContent}: ${error.message}`, true);
  }
  const save = Object.assign(document.createElement("a"), { href: image, download: link.download });
  save.click();
  setTimeout(() => URL.revokeObjectURL(image), 60_000);  // the download has its copy by then
}

const fmt = (value) => String(Number(Number(value).toPrecision(3)));

// The scale the legend shows, "min,max": what "hold this scale" holds.
let shownScale = null;

// The legend's colour ramp is an image of its own, which may fail where the TileJSON came: the
// legend then says so in its place (its values still show), until a later ramp loads.
function wireLegendImage() {
  const shown = (loaded) => {
    $("legend-img").hidden = !loaded;
    $("legend-note").hidden = loaded;
    $("legend-note").textContent = loaded ? "" : "The colour scale could not be loaded; the values at its ends show below.";
  };
  $("legend-img").addEventListener("load", () => shown(true));
  $("legend-img").addEventListener("error", () => shown(false));
}

// The colour ramp with the values at its ends; an end whose colour also stands for values beyond
// it (clipped) reads "≤ lo" / "≥ hi" and gets a triangle. `scale` is used where the server sends it.
function showLegend(tilejson) {
  const scale = tilejson.scale || {};
  const hasScale = Number.isFinite(scale.min) && Number.isFinite(scale.max);
  const [lo, hi] = hasScale ? [scale.min, scale.max] : tilejson.rescale;
  shownScale = `${lo},${hi}`;
  const ramp = new URL(tilejson.legend, window.location.href);
  const ratio = Math.min(window.devicePixelRatio || 1, 4), image = $("legend-img");
  for (const side of ["width", "height"]) {  // the <img>'s CSS pixels (index.html), of device pixels
    ramp.searchParams.set(side, String(Math.round(Number(image.getAttribute(side)) * ratio)));
  }
  image.src = ramp.href;
  $("legend").classList.toggle("clipped-low", scale.clipped_low === true);
  $("legend").classList.toggle("clipped-high", scale.clipped_high === true);
  $("legend-lo").textContent = (scale.clipped_low === true ? "≤ " : "") + fmt(lo);
  $("legend-hi").textContent = (scale.clipped_high === true ? "≥ " : "") + fmt(hi);
  $("legend-title").textContent = LEGEND_TITLES[state.layer];
  $("legend-title").title = scale.units || "";
  $("legend-desc").textContent = tilejson.description || "";
  $("legend-about").hidden = !tilejson.description;
  $("legend").hidden = false;
}

// --- The profile of a clicked place -----------------------------------------------------------

async function showProfile(map, lngLat) {
  if (!state.query) return setStatus("map a sound first, then click a place", true);
  const lon = wrapLng(lngLat.lng).toFixed(4), lat = lngLat.lat.toFixed(4);
  const asked = queryParams().toString();
  let answer;
  try {
    answer = await fetchJson(`${base}/point/${lon},${lat}?${asked}`);
  } catch (error) {
    return setStatus(`no profile here: ${error.message}`, true);
  }
  if (queryParams().toString() !== asked) return;  // the state changed while it was asked
  const box = document.createElement("div");
  box.className = "profile";
  const title = document.createElement("h3");
  title.textContent = `${shorten(state.label)} over the day`;
  box.appendChild(title);
  const canvas = document.createElement("canvas");
  box.appendChild(canvas);
  const note = document.createElement("p");
  note.textContent = `here: p = ${answer.score.toPrecision(3)}, contrast = ${answer.contrast.toPrecision(3)}, ` +
    `uncertainty S = ${answer.uncertainty.toPrecision(3)}`;
  box.appendChild(note);
  if (answer.local_time) box.appendChild(localTime(answer.local_time));
  const bySource = document.createElement("p");
  bySource.className = "by-source";
  bySource.textContent = "p by source: " + answer.by_source
    .map((entry) => `${entry.source === null ? "unknown" : entry.source} ${entry.score.toPrecision(3)}`).join(" · ");
  box.appendChild(bySource);
  drawProfile(canvas, answer.hours.map((h) => h.score), answer.hour ?? null);
  window.soundscape.profile?.remove();
  window.soundscape.profile = new maplibregl.Popup({ maxWidth: "280px" }).setLngLat(lngLat).setDOMContent(box).addTo(map);
}

// At one moment, the place's clock then (the answer's ISO 8601 local_time, at the place's offset):
// the hour and month its map and profile are of.
function localTime(iso) {
  const [, date, time, offset] = /^(.*)T(\d{2}:\d{2})(?::[\d.]+)?(.*)$/.exec(iso) || [null, iso, "", ""];
  const line = document.createElement("p");
  line.className = "local-time";
  line.textContent = `here then: ${date} ${time}${offset ? ` (UTC${offset})` : ""}, local time`;
  return line;
}

// The view's west, south, east, north in degrees: longitudes wrapped into -180..180 (west above
// east across the antimeridian), the whole world once the view spans it (to the 4 decimals
// /search is sent: a nearly whole view would round to west = east).
function viewEdges(bounds) {
  const wide = bounds.getEast() - bounds.getWest() >= 359.999;
  const west = wide ? -180 : wrapLng(bounds.getWest()), east = wide ? 180 : wrapLng(bounds.getEast());
  return [west, bounds.getSouth(), east, bounds.getNorth()];
}

// The view as /search's bbox (west,south,east,north).
function viewBox(bounds) {
  return viewEdges(bounds).map((v) => v.toFixed(4)).join(",");
}

// The image of the layer as the map shows it: GET /collections/{layer}/map with the tiles'
// parameters (the collection names the layer), the view's box in degrees and crs=EPSG:3857, so
// its pixels lie as the map's do, and the `tilesize` of the tiles the map draws (512 for the
// `@2x` tiles of a high-DPI screen), so the route draws from the zoom, and the cells, the map
// does. Its size is the view's, `width` x `height` pixels, but for the part of the view that is
// no map: beyond Web Mercator's latitudes (±85.0511), and every world past the
// first once the view spans more than one (the image is then -180..180). A side over the
// route's 2048 pixels scales both down, keeping the aspect. Null when no layer is drawn.
const MERCATOR_LAT = 85.0511, MAP_MAX_SIDE = 2048;
const mercatorY = (lat) => Math.log(Math.tan(Math.PI / 4 + (Math.max(Math.min(lat, 89.9999), -89.9999) * Math.PI) / 360));

function mapImageUrl(bounds, width, height, tileSize = 256) {
  if (!hasLayer()) return null;
  const [west, south, east, north] = viewEdges(bounds);
  const [bottom, top] = [south, north].map((lat) => Math.max(Math.min(lat, MERCATOR_LAT), -MERCATOR_LAT));
  const across = Math.min(360 / (bounds.getEast() - bounds.getWest()), 1);
  const down = (mercatorY(top) - mercatorY(bottom)) / (mercatorY(north) - mercatorY(south));
  let [w, h] = [width * across, height * down];
  const scale = Math.min(MAP_MAX_SIDE / Math.max(w, h), 1);
  [w, h] = [w, h].map((side) => Math.max(Math.round(side * scale), 1));
  const params = tileParams();
  params.delete("layer");  // the collection is the layer (the route refuses layer=)
  params.set("bbox", [west, bottom, east, top].map((v) => v.toFixed(6)).join(","));
  params.set("crs", "EPSG:3857");
  params.set("width", w);
  params.set("height", h);
  params.set("tilesize", tileSize);
  return `${base}/collections/${state.layer}/map?${params}`;
}

// "PNG of this view": a download of mapImageUrl for the map's view and canvas, in the screen's
// pixels (CSS pixels times the device pixel ratio) and from the map's tiles (MapLibre writes `@2x`
// for `{ratio}`, 512 px tiles, at a pixel ratio over 1), and "GeoTIFF of this view", its values
// over the same pixels; no href (nothing
// to follow) while there is no layer, or while the map is rotated or tilted: the image is north
// up and flat, so it would not be the view.
const TURNED = "the map is rotated or tilted: turn it north up and flat (right-drag, ctrl-drag) for a PNG or GeoTIFF of the view";
const mapImageTitles = {};
function showMapImage(map) {
  const canvas = map.getCanvas();
  const turned = map.getBearing() !== 0 || map.getPitch() !== 0;
  const ratio = window.devicePixelRatio || 1;  // the screen's pixels: a high-DPI screen's PNG is as sharp as its map
  const tileSize = map.getPixelRatio() > 1 ? 512 : 256;
  const url = turned ? null : mapImageUrl(map.getBounds(), canvas.clientWidth * ratio, canvas.clientHeight * ratio, tileSize);
  for (const [id, format] of [["map-image", "png"], ["map-values", "tif"]]) {
    const link = $(id);
    mapImageTitles[id] ??= link.title;
    link.title = turned && hasLayer() ? TURNED : mapImageTitles[id];
    if (url) link.href = format === "png" ? url : `${url}&f=${format}`;
    else link.removeAttribute("href");
    link.setAttribute("aria-disabled", String(!url));
    link.download = `soundscape-${state.layer}.${format}`;
  }
}

// /search for the ten best places in view, ranked as the layer shows them: by contrast on the
// contrast layer (where the sound stands out), else by match probability.
function bestParams(map, box = viewBox(map.getBounds())) {
  const params = queryParams();
  params.set("k", 10);
  params.set("rank_by", state.layer === "contrast" ? "contrast" : "score");
  params.set("bbox", box);
  return params;
}

// The marked places as the status last told of them: how many, of how many, ranked by what, and
// the sentence said; null when none are marked.
let marked = null;

// Numbered markers on the ten best places in view (or in a shared link's box), best first; the
// URL keeps the box, so a saved link shows the same places.
async function showBest(map, box = viewBox(map.getBounds())) {
  if (!state.query) return setStatus("map a sound first", true);
  const params = bestParams(map, box);
  let answer;
  try {
    answer = await fetchJson(`${base}/search?${params}`);
  } catch (error) {
    return setStatus(`no best places: ${error.message}`, true);
  }
  if (bestParams(map, box).toString() !== params.toString()) return;  // the state changed while it was asked
  clearBest();
  window.soundscape.best = answer.features.map((feature) => {
    const { rank, score, contrast } = feature.properties;
    const element = document.createElement("div");
    element.className = "best-marker";
    element.textContent = rank;
    element.title = `#${rank}: p = ${score.toPrecision(3)}, contrast = ${contrast.toPrecision(3)}`;
    element.style.zIndex = String(answer.features.length - rank + 1);  // overlapping, the better on top
    return new maplibregl.Marker({ element }).setLngLat(feature.geometry.coordinates).addTo(map);
  });
  state.best = box;
  writeUrlState(map);
  marked = { count: answer.features.length, ranked: answer.properties.ranked,
             by: params.get("rank_by") === "contrast" ? "where it stands out most" : "where it is likeliest" };
  sayBest(map);
}

// "in view" while the view is the box the places were found in; once the map has moved (or a
// link's box is not the window's), where they are from and how to mark the view's own.
function sayBest(map) {
  const places = `${describeQuery()}: the ${marked.count} of ${marked.ranked} places`;
  marked.said = viewBox(map.getBounds()) === state.best ? `${places} in view ${marked.by}`
    : `${places} ${marked.by} in the view they were marked in; “Best places in view” marks this one's`;
  setStatus(marked.said);
}

// After a move: the status of the marked places says where they are from, unless it has been
// given over to another message since.
function retellBest(map) {
  if (marked && $("status").textContent === marked.said) sayBest(map);
}

// The answers about places hold for the state they were asked under: the best places' markers
// and the open profile go when the query or the metadata change.
function clearPlaces() {
  clearBest();
  window.soundscape.profile?.remove();
}

// The status that told of the marked places says what is mapped again: they are gone.
function clearBest() {
  (window.soundscape.best || []).forEach((marker) => marker.remove());
  window.soundscape.best = [];
  state.best = null;
  if (marked && $("status").textContent === marked.said) setStatus(describeQuery());
  marked = null;
}

// A small line chart of 24 hourly scores, its y axis fitted to their range, with a dot on the
// hour the map is of (`hour`: the hour asked, or the place's at one moment; null for any hour),
// whose centre `data-mark` gives in CSS pixels. Drawn in CSS pixels on a canvas of the screen's
// device pixels, sharp on a high-DPI screen.
function drawProfile(canvas, scores, hour) {
  const w = 240, h = 110, pad = 18, ratio = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio);
  Object.assign(canvas.style, { width: `${w}px`, height: `${h}px` });
  const ctx = canvas.getContext("2d");
  ctx.scale(canvas.width / w, canvas.height / h);
  const lo = Math.min(...scores), hi = Math.max(...scores), span = Math.max(hi - lo, 1e-6);
  const x = (i) => pad + (i / 23) * (w - 2 * pad);
  const y = (v) => h - pad - ((v - lo) / span) * (h - 2 * pad);
  ctx.strokeStyle = "#ccc"; ctx.fillStyle = "#555"; ctx.font = "10px sans-serif";
  ctx.beginPath(); ctx.moveTo(pad, h - pad); ctx.lineTo(w - pad, h - pad); ctx.stroke();
  for (const hour of [0, 6, 12, 18, 23]) ctx.fillText(`${hour}h`, x(hour) - 6, h - 4);
  ctx.fillText(hi.toPrecision(3), 2, pad - 6);
  ctx.fillText(lo.toPrecision(3), 2, h - pad - 2);
  ctx.strokeStyle = "#b5367a"; ctx.lineWidth = 2;
  ctx.beginPath();
  scores.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.stroke();
  delete canvas.dataset.mark;
  if (hour === null) return;
  ctx.fillStyle = "#1d1d1d";
  ctx.beginPath(); ctx.arc(x(hour), y(scores[hour]), 4, 0, 2 * Math.PI); ctx.fill();
  canvas.dataset.mark = `${x(hour)},${y(scores[hour])}`;
}

// A link pasted into the address bar of an open viewer changes only the hash, and the browser does
// not load the page again: the viewer does, to show the link's state (its own changes of the URL go
// through history.replaceState, which fires no hashchange).
window.addEventListener("hashchange", () => window.location.reload());

main().catch((error) => setStatus(`viewer failed to start: ${error.message}`, true));
