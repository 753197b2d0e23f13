# syntax=docker/dockerfile:1
# CPU image for the tile server (`soundscape serve`). Core dependencies only: no torch, no CUDA.
#
#   docker build -f docker/server.Dockerfile -t soundscape-tiles/server:dev .
#   docker run --rm -p 8000:8000 -v "$PWD/data/demo:/data:ro" soundscape-tiles/server:dev
#
# /data must hold bundle/ (the model bundle) and store/ (a store that bundle built).

# ---- builder: install the project and its dependencies into a self-contained venv ----
FROM python:3.11.10-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

# The locked core set first (locks/core.txt, scripts/lock.sh makes it): its layer is reused until the
# lock changes. Every core dependency ships manylinux wheels (rasterio bundles GDAL, faiss-cpu its
# OpenMP), so no compiler or -dev packages are needed.
WORKDIR /src
COPY locks/core.txt locks/
RUN pip install --no-cache-dir -r locks/core.txt
# The context is filtered by .dockerignore (no .venv, data/, .git, tests/). Non-editable and without
# resolving again: the runtime stage gets only /opt/venv.
COPY . .
RUN pip install --no-cache-dir --no-deps . \
 && soundscape --help >/dev/null

# ---- runtime ----
FROM python:3.11.10-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="soundscape-tiles server" \
      org.opencontainers.image.description="Map tile server for soundscape heatmap and uncertainty tiles" \
      org.opencontainers.image.licenses="Apache-2.0"

# MALLOC_ARENA_MAX=2: glibc otherwise keeps up to 8 arenas per core, and the threadpools of
# uvicorn, onnxruntime and faiss fragment them into a steadily growing RSS.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# uid/gid 1000: the usual owner of a developer's bind-mounted ./data on the host.
RUN groupadd --gid 1000 soundscape \
 && useradd --uid 1000 --gid soundscape --no-log-init --create-home --shell /usr/sbin/nologin soundscape

COPY --from=builder /opt/venv /opt/venv

WORKDIR /home/soundscape
USER 1000:1000

EXPOSE 8000

# The slim image has no curl; urlopen raises (exit 1) on a refused connection or a non-2xx status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "__import__('urllib.request').request.urlopen('http://127.0.0.1:8000/healthz',timeout=4)"]

# Add `--workers N` for more processes (they share only Redis: set SOUNDSCAPE_REDIS_URL or --redis-url).
CMD ["soundscape", "serve", "--bundle", "/data/bundle", "--store", "/data/store", "--host", "0.0.0.0", "--port", "8000"]
