# The `cachectl mount` image (deploy/k8s/mount/):
#   docker build -f deploy/mount.Dockerfile -t registry.example.com/blockcache-mount:0.1.0 .
#   docker push registry.example.com/blockcache-mount:0.1.0
# pyfuse3 is built against libfuse3-dev; the runtime needs fuse3 (fusermount3, to detach a
# stale mount) and runs as root (mount(2), /sys read-ahead). The base is pinned as in
# ../Dockerfile; the Debian packages are not pinned to a version (DL3008): they come from the
# base's one Debian release, whose updates are security fixes. Linted by tests/deploy.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev \
    pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY cachenode cachenode
COPY client client
COPY coordinator coordinator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[mount]'

FROM ${PYTHON_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends fuse3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENTRYPOINT ["cachectl"]
