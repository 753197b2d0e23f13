"""HTTP routes, one module per part of the surface (docs/api.md)."""
