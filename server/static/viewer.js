// The soundscape viewer: MapLibre over the server's own imagery, a heatmap or uncertainty layer
// whose tile URL follows the panel, and a 24-hour profile of any clicked place.
"use strict";

const base = new URL(".", window.location.href).href.replace(/\/$/, "");
const $ = (id) => document.getElementById(id);
const state = { query: null, label: "", layer: "heatmap", opacity: 0.75, hour: null, month: null, rescale: null };
window.soundscape = { state, heatmapLoaded: false };

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// The tile URL of the current state: what the map draws and what "Copy XYZ URL" copies.
function tileUrl() {
  const params = new URLSearchParams();
  if (state.layer === "heatmap") {
    params.set("query", state.query);
    // The query's score percentiles over the whole store: one global scale with contrast.
    if (state.rescale) params.set("rescale", state.rescale.join(","));
  }
  if (state.hour !== null) params.set("hour", state.hour);
  if (state.month !== null) params.set("month", state.month);
  params.set("layer", state.layer);
  return `${base}/tiles/{z}/{x}/{y}.png?${params}`;
}

function metaParams() {
  const params = new URLSearchParams({ query: state.query });
  if (state.hour !== null) params.set("hour", state.hour);
  if (state.month !== null) params.set("month", state.month);
  return params;
}

async function fetchJson(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail || body);
    throw new Error(`${response.status}: ${detail}`);
  }
  return body;
}

async function main() {
  const info = await fetchJson(`${base}/tilejson.json?layer=uncertainty`);
  const map = new maplibregl.Map({
    container: "map",
    style: {
      version: 8,
      sources: {
        imagery: { type: "raster", tiles: [`${base}/basemap/{z}/{x}/{y}.webp`], tileSize: 256,
                   maxzoom: info.maxzoom, attribution: "Imagery: NASA Blue Marble NG" },
      },
      layers: [{ id: "imagery", type: "raster", source: "imagery" }],
    },
    bounds: [[info.bounds[0], info.bounds[1]], [info.bounds[2], info.bounds[3]]],
    fitBoundsOptions: { padding: 20 },
    renderWorldCopies: false,
  });
  window.soundscape.map = map;
  map.addControl(new maplibregl.NavigationControl({ showCompass: false }), "top-right");
  await new Promise((resolve) => map.on("load", resolve));

  let renderedUrl = null;
  function redraw() {
    updateLegend(info);
    $("copy").disabled = state.layer === "heatmap" && !state.query;
    if (state.layer === "heatmap" && !state.query) {
      if (map.getLayer("soundscape")) map.setLayoutProperty("soundscape", "visibility", "none");
      return;
    }
    const url = tileUrl();
    if (url === renderedUrl) return;
    renderedUrl = url;
    window.soundscape.heatmapLoaded = false;
    if (map.getSource("soundscape")) {
      map.getSource("soundscape").setTiles([url]);
      map.setLayoutProperty("soundscape", "visibility", "visible");
    } else {
      map.addSource("soundscape", { type: "raster", tiles: [url], tileSize: 256, bounds: info.bounds,
                                    minzoom: 0, maxzoom: 22 });
      map.addLayer({ id: "soundscape", type: "raster", source: "soundscape",
                     paint: { "raster-opacity": state.opacity, "raster-resampling": "linear",
                              "raster-fade-duration": 0 } });
    }
  }
  map.on("idle", () => {
    if (map.getSource("soundscape") && map.isSourceLoaded("soundscape") && renderedUrl) {
      window.soundscape.heatmapLoaded = true;
      document.body.dataset.heatmap = "loaded";
    }
  });
  map.on("error", (event) => setStatus(`map: ${event.error && event.error.message}`, true));

  async function register(options, label) {
    setStatus(`registering ${label}…`);
    try {
      const query = await fetchJson(`${base}/queries`, { method: "POST", ...options });
      state.query = query.id;
      state.rescale = query.score_range.map((v) => Number(v.toPrecision(3)));
      if (state.rescale[0] >= state.rescale[1]) state.rescale = null;
      state.label = query.text || `recording (${query.duration_s} s)`;
      setStatus(`query ${query.id}: ${state.label}`);
      delete document.body.dataset.heatmap;
      redraw();
    } catch (error) {
      setStatus(`could not register ${label}: ${error.message}`, true);
    }
  }

  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("text").value.trim();
    if (!text) return setStatus("type a sound first, e.g. birdsong", true);
    register({ headers: { "Content-Type": "application/json" }, body: JSON.stringify({ text }) }, `"${text}"`);
  });
  $("audio").addEventListener("change", () => {
    const file = $("audio").files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    register({ body: form }, file.name);
  });

  for (const name of ["hour", "month"]) {
    const slider = $(name), any = $(`${name}-any`), out = $(`${name}-out`);
    const sync = () => {
      slider.disabled = any.checked;
      state[name] = any.checked ? null : Number(slider.value);
      out.textContent = any.checked ? "" : (name === "hour" ? `${slider.value}:00` : slider.value);
      redraw();
    };
    slider.addEventListener("input", sync);
    any.addEventListener("change", sync);
  }
  for (const radio of document.querySelectorAll("input[name=layer]")) {
    radio.addEventListener("change", () => { state.layer = radio.value; redraw(); });
  }
  $("opacity").addEventListener("input", () => {
    state.opacity = Number($("opacity").value);
    if (map.getLayer("soundscape")) map.setPaintProperty("soundscape", "raster-opacity", state.opacity);
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
  map.on("click", (event) => showProfile(map, event.lngLat));
  redraw();
}

function updateLegend(info) {
  const heatmap = state.layer === "heatmap";
  $("legend-img").src = `${base}/colormaps/${heatmap ? "magma" : "viridis"}?width=220&height=12`;
  $("legend-title").textContent = heatmap ? "match probability" : "uncertainty (S)";
  const [lo, hi] = heatmap ? (state.rescale || [0, 1]) : info.rescale;
  $("legend-lo").textContent = String(Number(Number(lo).toPrecision(3)));
  $("legend-hi").textContent = String(Number(Number(hi).toPrecision(3)));
}

async function showProfile(map, lngLat) {
  if (!state.query) return setStatus("map a sound first, then click a place", true);
  const lon = lngLat.lng.toFixed(4), lat = lngLat.lat.toFixed(4);
  let answer;
  try {
    answer = await fetchJson(`${base}/point/${lon},${lat}?${metaParams()}`);
  } catch (error) {
    return setStatus(`no profile here: ${error.message}`, true);
  }
  const box = document.createElement("div");
  box.className = "profile";
  box.innerHTML = `<h3>${state.label} over the day</h3>`;
  const canvas = document.createElement("canvas");
  canvas.width = 240; canvas.height = 110;
  box.appendChild(canvas);
  const note = document.createElement("p");
  note.textContent = `here: p = ${answer.score.toPrecision(3)}, uncertainty S = ${answer.uncertainty.toPrecision(3)}`;
  box.appendChild(note);
  drawProfile(canvas, answer.hours.map((h) => h.score));
  new maplibregl.Popup({ maxWidth: "280px" }).setLngLat(lngLat).setDOMContent(box).addTo(map);
}

// A small line chart of 24 hourly scores, its y axis fitted to their range.
function drawProfile(canvas, scores) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height, pad = 18;
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
}

main().catch((error) => setStatus(`viewer failed to start: ${error.message}`, true));
