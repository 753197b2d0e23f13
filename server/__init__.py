"""HTTP: routes, rendering, caching, the viewer page. Never imports torch."""
