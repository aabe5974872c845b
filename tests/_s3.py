"""An S3 server on loopback for the object-store tests: moto's server mode in a thread of the
test process, with IAM authentication on, so wrong credentials are refused as by AWS.

:func:`s3_server` starts it (once per session); :class:`S3` carries its endpoint, a user's
credentials and the ``storage_options`` that reach it, and makes buckets.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@dataclass(frozen=True)
class S3:
    endpoint: str
    key: str
    secret: str

    @property
    def options(self) -> dict[str, Any]:
        """The storage options of a store URL in this server."""
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret}

    def client(self, **overrides: Any) -> Any:
        import boto3

        settings = {
            "endpoint_url": self.endpoint,
            "aws_access_key_id": self.key,
            "aws_secret_access_key": self.secret,
            "region_name": "us-east-1",
        }
        return boto3.client("s3", **{**settings, **overrides})

    def bucket(self) -> str:
        """A new empty bucket's name."""
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def start() -> tuple[Any, S3]:
    """Start the server and make a user allowed everything; from then on every request must
    be signed with that user's key (moto counts unauthenticated requests until reset-auth)."""
    import boto3
    from moto import settings
    from moto.core.authorization import ActionAuthenticatorMixin
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="setup",
        aws_secret_access_key="setup",
        region_name="us-east-1",
    )
    iam.create_user(UserName="actextract")
    iam.put_user_policy(UserName="actextract", PolicyName="all", PolicyDocument=json.dumps(POLICY))
    created = iam.create_access_key(UserName="actextract")["AccessKey"]
    # the server runs in this process: switch authentication on for every later request
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    return server, S3(endpoint, created["AccessKeyId"], created["SecretAccessKey"])


def start_public() -> tuple[Any, S3]:
    """A second server, of a lab's public kind: no authentication (moto's default), in a
    process of its own (``start``'s switch is process-wide); the keys are any."""
    import subprocess
    import sys
    import time
    import urllib.request

    from _runner import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2)
            return server, S3(endpoint, "any", "any")
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise
            time.sleep(0.3)
