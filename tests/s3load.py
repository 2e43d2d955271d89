"""A tenant's herd in its own process: threads reading objects through an S3 endpoint, in a loop.

    python -m tests.s3load ENDPOINT KEY_ID SECRET BUCKET THREADS KEY [KEY ...]

Each thread reads whole objects (boto3 GetObject, no retries of its own), going round the keys
from its own starting point; a 503 (SlowDown) makes it wait the answer's Retry-After. Runs
until killed (SIGTERM); its own process, so its CPU and GIL stay out of the measuring one.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import boto3
import botocore.config
from botocore.exceptions import ClientError


def reader(client: Any, bucket: str, keys: list[str], start: int) -> None:
    """Read `keys` round and round from `start`; back off as the 503s say."""
    i = start
    while True:
        key = keys[i % len(keys)]
        i += 1
        try:
            client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as e:
            meta = e.response.get("ResponseMetadata", {})
            if meta.get("HTTPStatusCode") != 503:
                raise
            retry = meta.get("HTTPHeaders", {}).get("retry-after", "1")
            time.sleep(min(5.0, float(retry) if retry.isdigit() else 1.0))


def main(argv: list[str]) -> None:
    """Start the readers and wait for them (forever, unless one fails)."""
    endpoint, key_id, secret, bucket, threads, *keys = argv
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key_id,
                          aws_secret_access_key=secret, region_name="us-east-1",
                          config=botocore.config.Config(
                              s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                              max_pool_connections=int(threads) + 2, read_timeout=120))
    n = int(threads)
    workers = [threading.Thread(target=reader, args=(client, bucket, keys, i * len(keys) // n),
                                daemon=True) for i in range(n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


if __name__ == "__main__":
    main(sys.argv[1:])
