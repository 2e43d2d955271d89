# blockcache image: cachenode (the entrypoint), cachecoordinator and cachectl.
#   docker build -t registry.example.com/blockcache:0.1.0 .
#   docker push registry.example.com/blockcache:0.1.0
# Linted by tests/deploy/test_package.py (hadolint). The base is pinned to one Python release
# and one Debian release; add its digest (`docker pull python:3.11.11-slim-bookworm` prints
# it) to pin it to the byte: `FROM python:3.11.11-slim-bookworm@sha256:<digest>`.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/blockcache
COPY pyproject.toml README.md LICENSE ./
COPY cachenode cachenode
COPY client client
COPY coordinator coordinator
RUN /opt/blockcache/bin/pip install --no-cache-dir .

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/blockcache /opt/blockcache
RUN groupadd --gid 10001 blockcache \
    && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin blockcache \
    && mkdir /data && chown 10001:10001 /data
USER 10001:10001
ENV PATH=/opt/blockcache/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    CACHENODE_DATA_DIR=/data CACHENODE_HTTP=0.0.0.0:8080 CACHENODE_GRPC=0.0.0.0:9090 \
    CACHENODE_S3=0.0.0.0:9000
VOLUME ["/data"]
EXPOSE 8080 9090 9000
ENTRYPOINT ["cachenode"]
