# blockcache node image: `docker build -t blockcache .`
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cachenode cachenode
COPY client client
COPY coordinator coordinator
RUN pip install --no-cache-dir . && useradd --uid 10001 blockcache && mkdir /data \
    && chown blockcache /data
USER blockcache
ENV CACHENODE_DATA_DIR=/data CACHENODE_HTTP=0.0.0.0:8080 CACHENODE_GRPC=0.0.0.0:9090 CACHENODE_S3=0.0.0.0:9000
EXPOSE 8080 9090 9000
ENTRYPOINT ["cachenode"]
