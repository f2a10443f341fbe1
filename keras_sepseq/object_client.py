"""Reading S3 objects through obstore (Rust's `object_store`) when it is installed: a quarter of the CPU per read.

On this project's 2-core machine a GET through s3fs costs 1.1-1.2 ms of CPU
in the reading process (botocore builds, signs and parses each request in
Python; aiohttp and fsspec's event loop hand it over), and through obstore
0.3 ms (signing, HTTP and parsing in Rust, outside the GIL). The first
epoch from S3 is CPU-bound on small machines, so the client matters more
than the latency (docs/benchmarks.md, "Object storage").

obstore reads only what it is told: keys from `storage_options` or the
`AWS_*` environment variables, not `~/.aws` profiles or botocore's other
sources, and its region from the options or the environment. So it is
used for an `s3://` URL only when

- `obstore` imports (`pip install "keras-sepseq[s3]"` installs it),
- `KERAS_SEPSEQ_S3_CLIENT` is not `s3fs`,
- every key of `storage_options` translates (`key`, `secret`, `token`,
  `anon`, `endpoint_url`, `client_kwargs={"endpoint_url", "region_name"}`,
  and the client settings keras_sepseq itself adds), and
- credentials are in the options, in `AWS_ACCESS_KEY_ID` and
  `AWS_SECRET_ACCESS_KEY`, or `anon=True`.

Otherwise s3fs reads, as it lists buckets in every case; s3fs also reads
in processes forked from one that used obstore (its threads do not survive
`fork()`). A store that
answers obstore in a way s3fs could handle (a redirect to another region,
a configuration it refuses) is handed to s3fs for good, with one warning;
404 and 403 are answers, and go to the error policy as from s3fs.

obstore retries nothing here (`read_url` retries transient failures and
counts them). Its errors are turned into the exceptions s3fs raises
(`FileNotFoundError`, `PermissionError`, `ConnectionError`, or an `OSError`
carrying the HTTP `status`), with a message of one line that names the URL
and never the credentials.

Example:

>>> reader = s3_reader("s3://bucket/a.png", {"anon": True})  # doctest: +SKIP
>>> reader("s3://bucket/a.png")  # doctest: +SKIP
b'\\x89PNG...'
"""

from __future__ import annotations

import datetime
import os
import re
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

__all__ = ["ObjectStoreError", "UseFsspec", "s3_reader"]

CLIENT_VARIABLE = "KERAS_SEPSEQ_S3_CLIENT"
"""Set to `s3fs` to read every `s3://` URL through s3fs."""

_STATUS = re.compile(r"status(?: code)?:? (\d{3})")
_SENDING = re.compile(r"error sending request|connect|timed? ?out|connection (?:reset|closed)|broken pipe", re.I)


class ObjectStoreError(OSError):
    """A failed read through obstore, with the HTTP `status` when there was an answer.

    Args:
        message: One line naming the URL.
        status: The HTTP status, or `None`.

    Example:

    >>> ObjectStoreError("s3://b/k: HTTP 503", 503).status
    503
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UseFsspec(Exception):  # noqa: N818 (a signal to the caller, not a failure to report)
    """obstore cannot read this store the way s3fs would: the caller reads the URL through fsspec instead."""


_READERS: dict[tuple, Any] = {}
_LOCK = threading.Lock()
_RUNTIME_PID: list[int | None] = [None]
"""The process that used obstore first. Its runtime's threads do not survive `fork()`: a forked child that
reads through it waits forever (measured with obstore 0.12), so children of that process read through s3fs."""


def _translate(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """`(S3Store config, client options)` for fsspec `options`, or `None` when some option has no equivalent."""
    config: dict[str, Any] = {}
    client: dict[str, Any] = {"timeout": datetime.timedelta(seconds=120)}
    rest = dict(options)
    names = {"key": "access_key_id", "secret": "secret_access_key", "token": "session_token"}
    for ours, theirs in names.items():
        value = rest.pop(ours, None)
        if value is not None:
            config[theirs] = str(value)
    if rest.pop("anon", False):
        config["skip_signature"] = True
    kwargs = dict(rest.pop("client_kwargs", None) or {})
    endpoint = rest.pop("endpoint_url", None) or kwargs.pop("endpoint_url", None)
    region = kwargs.pop("region_name", None)
    if rest or kwargs:
        return None  # an option obstore has no equivalent for (a profile, addressing style, ...): s3fs
    if endpoint:
        config["endpoint"] = str(endpoint)
        client["allow_http"] = str(endpoint).startswith("http://")
    if region:
        config["region"] = str(region)
    has_keys = "access_key_id" in config or (
        os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    )
    if not has_keys and not config.get("skip_signature"):
        return None  # credentials from a profile or botocore's other sources: s3fs finds them
    return config, client


def s3_reader(url: str, options: Mapping[str, Any] | None) -> Callable[[str], bytes] | None:
    """A function reading `s3://` URLs of `url`'s bucket through obstore, or `None` where s3fs should read.

    Args:
        url: An `s3://` (or `s3a://`) URL.
        options: The fsspec storage options, as the user gave them.

    Returns:
        `read(url) -> bytes`, raising `FileNotFoundError`,
        `PermissionError`, `ConnectionError` or `ObjectStoreError`, or
        `UseFsspec` once the store turned out to need s3fs; or `None`
        (see the module docstring for when).

    Example:

    >>> s3_reader("s3://bucket/a.png", {"profile": "work"}) is None  # a profile: s3fs reads
    True
    """
    if os.environ.get(CLIENT_VARIABLE, "").strip().lower() == "s3fs":
        return None
    if _RUNTIME_PID[0] not in (None, os.getpid()):
        return None  # forked after obstore started its threads here: obstore would hang in this process; s3fs reads
    scheme, _, rest = url.partition("://")
    if scheme not in ("s3", "s3a") or not rest:
        return None
    bucket = rest.split("/", 1)[0]
    key = (bucket, repr(sorted((options or {}).items(), key=lambda kv: kv[0])))
    with _LOCK:
        if key in _READERS:
            return _READERS[key]
    reader = _make_reader(bucket, options or {})
    with _LOCK:
        return _READERS.setdefault(key, reader)


def _make_reader(bucket: str, options: Mapping[str, Any]) -> Callable[[str], bytes] | None:
    try:
        import obstore
        from obstore.store import S3Store
    except ImportError:
        return None
    settings = _translate(options)
    if settings is None:
        return None
    config, client = settings
    try:
        store = S3Store(
            bucket, config=cast(Any, config), client_options=cast(Any, client), retry_config={"max_retries": 0}
        )
    except Exception:  # a configuration obstore refuses: s3fs decides what it means
        return None
    state = {"usable": True}
    with _LOCK:
        _RUNTIME_PID[0] = os.getpid()

    def read(url: str) -> bytes:
        if not state["usable"]:
            raise UseFsspec(url)
        path = url.partition("://")[2].split("/", 1)[1] if "/" in url.partition("://")[2] else ""
        try:
            return bytes(obstore.get(store, path).bytes())
        except Exception as e:
            error = _mapped(e, url)
        if isinstance(error, UseFsspec):
            state["usable"] = False
            warnings.warn(
                f"keras_sepseq: obstore could not read s3://{bucket} ({error}); reading it through s3fs from now on.",
                stacklevel=2,
            )
        raise error

    return read


def _mapped(error: Exception, url: str) -> Exception:
    """The exception s3fs would have raised for obstore's `error`, with a one-line message.

    obstore's message holds the request's URL, the server's XML answer and
    a debug dump; the one-line message keeps the status and the answer's
    `Code` and `Message` (what S3 says, "SlowDown" say), and never headers.
    """
    text = str(error).split("\n\nDebug source", 1)[0]
    first = text.splitlines()[0] if text else type(error).__name__
    match = _STATUS.search(text)
    status = int(match.group(1)) if match else None
    said = " ".join(
        found.group(1).strip() for tag in ("Code", "Message") if (found := re.search(f"<{tag}>(.*?)</{tag}>", text))
    )
    if isinstance(error, FileNotFoundError) or status == 404:
        return FileNotFoundError(f"no such object: {url}")
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"PermissionDeniedError", "UnauthenticatedError"} or status in (401, 403):
        return PermissionError(f"access refused to {url} (HTTP {status or 403}{': ' + said if said else ''})")
    if status is not None:
        detail = f"HTTP {status}{': ' + said if said else ''}"[:300]
        if status in (408, 429) or status >= 500:
            return ObjectStoreError(detail, status)
        return UseFsspec(detail)  # a redirect to another region, a request s3fs would shape otherwise
    detail = first.rsplit(" - ", 1)[-1][:200]  # what failed, without obstore's "Error performing GET <url> in 1ms"
    if _SENDING.search(first):
        return ConnectionError(detail)
    return UseFsspec(detail)
