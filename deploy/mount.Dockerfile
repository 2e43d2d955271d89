# The `cachectl mount` image (deploy/k8s/mount-*.yaml): `docker build -f deploy/mount.Dockerfile
# -t blockcache-mount .` pyfuse3 is built against libfuse3-dev; the runtime needs fuse3
# (fusermount3, to detach a stale mount) and runs as root (mount(2), /sys read-ahead).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev libfuse3-dev \
    pkg-config && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cachenode cachenode
COPY client client
COPY coordinator coordinator
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[mount]'

FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends fuse3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENTRYPOINT ["cachectl"]
