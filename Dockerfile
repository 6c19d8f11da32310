# lis: CPU image for x86_64 nodes.
#
#   docker build -t lis .
#
# Serve the demo services on one box (the ingress listens beyond loopback, so
# clients send `Authorization: Bearer $LIS_TOKEN`):
#   docker run --rm -p 8000:8000 --shm-size=1g -e LIS_TOKEN=$(openssl rand -hex 16) lis
#
# Be a cluster node (Ray needs many ports: use the host's network; the token file
# must be readable by uid 10001, mode 0600; see docs/clusters.md):
#   docker run -d --network host --shm-size=2g -v /etc/lis:/etc/lis:ro \
#     lis node head --block --token-file /etc/lis/cluster-token
#   docker run -d --network host --shm-size=2g -v /etc/lis:/etc/lis:ro \
#     lis node join --block --address 192.168.50.2:6379 --token-file /etc/lis/cluster-token
#   docker exec <head container> lis up --address auto /etc/lis/services.yaml --detach
#
# --shm-size: Ray's object store lives in /dev/shm; Docker's default 64 MB is below
# Ray's 75 MiB minimum, and Ray then falls back to a slow disk-backed store.
#
# The install is `scripts/install.sh compile`, the script `make install` runs, so
# the image holds exactly what a developer machine does. lis stays linked to
# /opt/lis (EDITABLE=1, as on a developer machine): its demo configuration and
# the models built into build/models/ are found beside the source tree.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: compilers for `lis compile` (TVM links with g++) and any sdist ----
FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ libgomp1 \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 \
    TOPHUB_LOCATION=NONE \
    RAY_USAGE_STATS_ENABLED=0
WORKDIR /opt/lis
# .dockerignore keeps the host's .venv, build/ and .git out of the context.
COPY . .
RUN VENV=/opt/lis/.venv PYTHON=python3.11 EDITABLE=1 scripts/install.sh compile
# The demo models are compiled here, once, not on every container start.
RUN /opt/lis/.venv/bin/lis models build

# ---- runtime: no compiler, a non-root user ----
FROM ${PYTHON_IMAGE}
# libgomp1: the OpenMP runtime of MXNet, DLR and TVM. curl is not needed: the
# health check uses Python.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 lis \
 && useradd --system --uid 10001 --gid lis --home-dir /var/lib/lis --create-home \
      --shell /usr/sbin/nologin lis
# The virtualenv has absolute paths: it keeps the path it was built at.
COPY --from=build /opt/lis /opt/lis
ENV PATH=/opt/lis/.venv/bin:$PATH \
    TOPHUB_LOCATION=NONE \
    RAY_USAGE_STATS_ENABLED=0 \
    LIS_CACHE_DIR=/var/lib/lis/cache \
    PYTHONUNBUFFERED=1
WORKDIR /opt/lis
USER lis
EXPOSE 8000
# /healthz answers without a token; it is up once the ingress on this node is.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["lis"]
# The demo services, on every interface (a bearer token is then required: LIS_TOKEN,
# or one lis generates into ~/.config/lis/http-token and prints).
CMD ["up", "--host", "0.0.0.0"]
