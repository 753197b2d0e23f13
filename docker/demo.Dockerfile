# syntax=docker/dockerfile:1
# One-shot image that builds the demo world (`soundscape demo --build-only`): the Blue Marble
# GeoTIFF, the bundle assembled from weights/demo and the packaged MiniLM and aisfx towers (an ONNX
# export, hence torch and the train extra), and the store of levels 0..7 on the CPU. docker-compose's
# `demo` service runs it before the server; the server image stays torch-free.
#
#   docker build -f docker/demo.Dockerfile -t soundscape-tiles/demo:dev .
#   docker run --rm -v "$PWD/data/demo:/data" -v "$PWD/weights/demo:/weights:ro" soundscape-tiles/demo:dev
#
# The trained weights are mounted, not baked in (.dockerignore keeps weights/ out of every image).
# torch comes from locks/torch.txt: the default index serves its CUDA build (several GB of CUDA
# libraries this CPU job never loads); pass the CPU wheel index PyTorch documents as
# --build-arg TORCH_INDEX=URL (docker-compose: SOUNDSCAPE_TORCH_INDEX) for an image a few GB smaller.

# ---- builder: venv with the locked core + train set, CPU torch and aisfx ----
FROM python:3.11.10-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN python -m venv /opt/venv

ARG TORCH_INDEX=""
WORKDIR /src
COPY locks/torch.txt locks/train.txt locks/
# torch first, so the lock's sentence-transformers finds it; aisfx without its declared (outdated)
# dependencies, as scripts/setup.sh installs it.
RUN pip install --no-cache-dir ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} -r locks/torch.txt \
 && pip install --no-cache-dir -r locks/train.txt \
 && pip install --no-cache-dir --no-deps "aisfx==0.1.2"
# The context is filtered by .dockerignore (no .venv, data/, .git, tests/, weights/).
COPY . .
RUN pip install --no-cache-dir --no-deps . \
 && soundscape demo --help >/dev/null

# ---- runtime ----
FROM python:3.11.10-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="soundscape-tiles demo builder" \
      org.opencontainers.image.description="One-shot job that builds the demo world's imagery, bundle and store" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MALLOC_ARENA_MAX=2 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/soundscape

# uid/gid 1000: the usual owner of a developer's bind-mounted ./data on the host. /data belongs to it,
# so a named volume mounted there starts writable too.
RUN groupadd --gid 1000 soundscape \
 && useradd --uid 1000 --gid soundscape --no-log-init --create-home --shell /usr/sbin/nologin soundscape \
 && mkdir -p /data \
 && chown soundscape:soundscape /data

COPY --from=builder /opt/venv /opt/venv

WORKDIR /data
USER 1000:1000
VOLUME ["/data"]

ENTRYPOINT ["soundscape", "demo"]
CMD ["--data-dir", "/data", "--weights", "/weights", "--build-only"]
