"""Remote stores: the storage options a URL is opened with, the one request that checks a
bucket can be reached before anything is built on it, and the messages of its failures.

``storage_options`` (``--storage-options JSON``) go to fsspec as they are, e.g.
``{"endpoint_url": "http://127.0.0.1:9000", "key": ..., "secret": ...}`` or ``{"anon": true}``
for s3fs; without them fsspec's own defaults apply (for S3: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``~/.aws``). A missing bucket,
refused credentials and an endpoint that does not answer become a :class:`StoreError` naming
the URL and the fix (exit 2) instead of a traceback: :func:`probe` asks once, on open, and
:func:`remote_error_message` words what a later request raises.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from zarr.core.sync import sync

from actextract.errors import OptionError, StoreError

__all__ = ["check_options", "probe", "probe_options", "remote_error_message", "worded"]

REMOTE_IO = getattr(errno, "EREMOTEIO", 121)  # s3fs's errno for an HTTP 5xx (Linux)

# fsspec protocols whose URLs name a bucket (or container) first: the probe asks for it
BUCKETS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "r2", "oss", "tos"}
# exception class names (botocore, aiohttp, requests) of "the endpoint did not answer"
UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientConnectorError",
    "ClientConnectionError",
    "ServerTimeoutError",
    "ConnectionError",
    "ConnectionRefusedError",
    "TimeoutError",
}
NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"}


def check_options(options: Any, *, name: str = "storage_options") -> dict[str, Any] | None:
    """``options`` as the dict fsspec takes, or None; a JSON text is parsed (the CLI's form)."""
    if options is None:
        return None
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except json.JSONDecodeError as e:
            raise OptionError(
                f"{name} '{options}' is not JSON ({e.msg}); give an object, e.g. "
                '\'{"endpoint_url": "http://127.0.0.1:9000", "anon": true}\'.'
            ) from None
    if not isinstance(options, Mapping):
        raise OptionError(
            f"{name} must be a JSON object of fsspec options (got {type(options).__name__}), "
            'e.g. \'{"endpoint_url": "http://127.0.0.1:9000", "anon": true}\'.'
        )
    return dict(options)


def endpoint(url: str, options: Mapping[str, Any] | None) -> str | None:
    """Where requests for ``url`` go, when set: an option, else the environment."""
    options = options or {}
    client = options.get("client_kwargs") or {}
    found = options.get("endpoint_url") or client.get("endpoint_url")
    if found is None and urlparse(url).scheme in ("s3", "s3a"):
        found = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return found


def probe_options(url: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options of the probe's request: for S3, botocore's retries cut to two attempts of
    at most 10 s each (unless given), so an endpoint that does not answer is reported in
    seconds; the run's own requests keep the file system's patient defaults."""
    options = dict(options or {})
    if urlparse(url).scheme in ("s3", "s3a"):
        config = {"connect_timeout": 10, "retries": {"max_attempts": 2}}
        options["config_kwargs"] = {**config, **(options.get("config_kwargs") or {})}
    return options


def probe(store: Any, url: str, options: Mapping[str, Any] | None) -> None:
    """One request that the bucket of ``url`` (a zarr FsspecStore) exists and these
    credentials may use it: an unreachable endpoint, refused credentials or a missing bucket
    raise their StoreError here, before a model is loaded or a key written."""
    fs, path = store.fs, store.path
    bucket = path.split("/", 1)[0]
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    with worded(url, options, bucket=bucket):
        if protocols & BUCKETS:
            sync(fs._info(bucket))
        else:
            sync(fs._exists(path))


@contextmanager
def worded(url: str, options: Mapping[str, Any] | None, *, bucket: str | None = None):
    """Requests about the store at ``url``: what :func:`remote_error_message` words (a
    missing bucket, refused credentials, a silent endpoint) is raised as that StoreError,
    anything else as it is."""
    try:
        yield
    except Exception as e:
        message = remote_error_message(e, url, options, bucket=bucket)
        if message is None:
            raise
        raise StoreError(message) from e


def remote_error_message(
    exc: BaseException,
    url: str,
    options: Mapping[str, Any] | None,
    *,
    bucket: str | None = None,
    doing: str = "open",
) -> str | None:
    """The user-facing message of ``exc``, raised by a request for the store at ``url``, or
    None when it is not about reaching the store (a bug, a damaged chunk: raised as it is)."""
    names = {c.__name__ for c in type(exc).__mro__}
    at = endpoint(url, options)
    where = f" at {at}" if at else ""
    if names & NO_CREDENTIALS:
        return (
            f"cannot {doing} '{url}': no credentials were found ({exc}). Give them with "
            '--storage-options \'{"key": "...", "secret": "..."}\' (or AWS_ACCESS_KEY_ID and '
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE); for a public bucket, '{\"anon\": true}'."
        )
    if names & UNREACHABLE:
        return (
            f"cannot {doing} '{url}': the endpoint{where or ' of its scheme'} does not answer "
            f"({type(exc).__name__}: {exc}). Check the server is up and the endpoint is right: "
            '--storage-options \'{"endpoint_url": "http://HOST:PORT"}\' (or AWS_ENDPOINT_URL).'
        )
    if isinstance(exc, PermissionError) and (options or {}).get("anon"):
        return (
            f"cannot {doing} '{url}': the server{where} refused anonymous access ({exc}): the "
            'bucket is not public. Drop "anon" and give a key and secret '
            '(--storage-options \'{"key": "...", "secret": "..."}\', or AWS_ACCESS_KEY_ID and '
            "AWS_SECRET_ACCESS_KEY)."
        )
    if isinstance(exc, PermissionError):
        return (
            f"cannot {doing} '{url}': the server{where} refused these credentials ({exc}). "
            'Check the key and secret (--storage-options \'{"key": "...", "secret": "..."}\', '
            "or AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and that they may "
            f"{'write' if doing != 'open' else 'read'} this bucket."
        )
    if isinstance(exc, OSError) and exc.errno == REMOTE_IO:  # s3fs: an HTTP 5xx
        return (
            f"cannot {doing} '{url}': the server{where} failed to answer ({exc}). It is the "
            "server's error, not the request's: try again, and look at the server's log if "
            "it persists."
        )
    if isinstance(exc, FileNotFoundError) and bucket is not None:
        return (
            f"cannot {doing} '{url}': its bucket '{bucket}' does not exist{where}. Create it "
            f"first (e.g. aws s3 mb s3://{bucket}) or correct the URL."
        )
    if isinstance(exc, FileNotFoundError) and "bucket" in str(exc).lower():
        return f"cannot {doing} '{url}': {exc}{where}. Create the bucket first or correct the URL."
    return None
