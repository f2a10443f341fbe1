"""What a libcurl reader asks a store for, and what the answers become: settings, URLs, certificates, errors.

`keras_sepseq.object_client` reads; this module holds its pure parts:
the libcurl settings an S3 bucket's fsspec `storage_options` translate to
(or `None` where s3fs should read), an object's HTTP URL, the certificate
bundle HTTPS is checked against, and the exceptions an HTTP answer or a
failed connection becomes (those s3fs and fsspec raise, with the URL named
and never the credentials).

Example:

>>> answer_error(404, b"", "s3://bucket/a.png")
FileNotFoundError('no such object: s3://bucket/a.png')
"""

from __future__ import annotations

import os
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ObjectStoreError",
    "UseFsspec",
    "answer_error",
    "ca_bundle",
    "connection_error",
    "display_url",
    "is_url",
    "object_url",
    "protocol",
    "translate",
]

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_url(path: Any) -> bool:
    """Whether `path` is a URL (`scheme://...`) rather than a local path.

    Args:
        path: A path or URL.

    Returns:
        `True` for `s3://...`, `https://...`, `memory://...` and the like.

    Example:

    >>> is_url("gs://bucket/a.png"), is_url("/data/a.png")
    (True, False)
    """
    return isinstance(path, str) and _URL.match(path) is not None


def protocol(url: str) -> str:
    """The scheme of `url`, lower case (`"s3"` for `s3://bucket/key`)."""
    match = _URL.match(url)
    return "" if match is None else match.group(1).lower()


def display_url(url: str) -> str:
    """`url` as it may appear in messages and logs: without a user, password or signed query.

    Args:
        url: A URL or path.

    Returns:
        The URL with `user:password@` and any query string removed.

    Example:

    >>> display_url("https://me:pw@host/a.png?X-Amz-Signature=abc")
    'https://host/a.png'
    """
    if not is_url(url):
        return url
    scheme, rest = url.split("://", 1)
    host, slash, tail = rest.partition("/")
    host = host.rsplit("@", 1)[-1]
    return f"{scheme}://{host}{slash}{tail.split('?', 1)[0]}"


_CONNECTION_ERRORS = {5, 6, 7, 18, 28, 35, 52, 55, 56}
"""libcurl's codes for a connection that failed, dropped or stalled: proxy/host not resolved, connect
failed, partial body, timeout, TLS handshake, empty reply, send and receive errors."""

_DNS_SAFE = re.compile(r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")


class ObjectStoreError(OSError):
    """A failed read with an HTTP answer, carrying its `status`.

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
    """libcurl cannot read this store the way s3fs would: the caller reads the URL through fsspec instead."""


def translate(options: Mapping[str, Any]) -> dict[str, Any] | None:
    """What libcurl needs to read a bucket with fsspec `options`, or `None` when some option has no equivalent."""
    rest = dict(options)
    settings: dict[str, Any] = {name: rest.pop(name, None) for name in ("key", "secret", "token")}
    settings["anon"] = bool(rest.pop("anon", False))
    kwargs = dict(rest.pop("client_kwargs", None) or {})
    endpoint = rest.pop("endpoint_url", None) or kwargs.pop("endpoint_url", None)
    region = kwargs.pop("region_name", None)
    if rest or kwargs:
        return None  # an option with no equivalent here (a profile, addressing style, ...): s3fs
    env = os.environ
    settings["endpoint"] = str(endpoint or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "")
    settings["region"] = str(region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
    if settings["anon"]:
        settings["key"] = settings["secret"] = settings["token"] = None
        return settings
    if settings["key"] is None and settings["secret"] is None:
        settings["key"], settings["secret"] = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        settings["token"] = settings["token"] or env.get("AWS_SESSION_TOKEN")
    if not settings["key"] or not settings["secret"]:
        return None  # credentials from a profile or botocore's other sources: s3fs finds them
    return settings


def object_url(settings: Mapping[str, Any], bucket: str, key: str) -> str:
    """The HTTP URL of `bucket/key`: path style on a given endpoint, virtual-hosted on AWS where the name allows."""
    quoted = urllib.parse.quote(key, safe="/~")
    if settings["endpoint"]:
        return f"{settings['endpoint'].rstrip('/')}/{bucket}/{quoted}"
    region = settings["region"]
    if _DNS_SAFE.match(bucket):
        return f"https://{bucket}.s3.{region}.amazonaws.com/{quoted}"
    return f"https://s3.{region}.amazonaws.com/{bucket}/{quoted}"


def ca_bundle() -> str | None:
    """The certificates HTTPS is checked against: as botocore finds them, else this system's, else certifi's.

    The libcurl in pycurl's wheels looks where the system it was built on
    keeps them (`/etc/pki/tls/certs/ca-bundle.crt`), which other systems
    do not have. `None`: libcurl's own default.
    """
    for name in ("AWS_CA_BUNDLE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        if os.environ.get(name):
            return os.environ[name]
    system = ssl.get_default_verify_paths().cafile  # Python's OpenSSL's file, where it exists
    if system:
        return system
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def answer_error(status: int, body: bytes, url: str, *, direct: bool = False) -> Exception:
    """The exception s3fs would raise for an HTTP answer `status`, with S3's `Code` and `Message` in one line.

    Args:
        status: The HTTP status, not 200.
        body: The answer's body.
        url: The URL to name (credentials removed).
        direct: A web server's answer rather than S3's: any other status is
            an `ObjectStoreError` for this URL, not a sign that s3fs should
            read the store.

    Returns:
        `FileNotFoundError` (404), `PermissionError` (401, 403),
        `ObjectStoreError` with the `status` (408, 429, 5xx, and any other
        from a web server), else `UseFsspec`.
    """
    text = body[:4096].decode("utf-8", "replace")
    said = " ".join(
        found.group(1).strip() for tag in ("Code", "Message") if (found := re.search(f"<{tag}>(.*?)</{tag}>", text))
    )
    detail = f"HTTP {status}{': ' + said if said else ''}"[:300]
    if status == 404:
        return FileNotFoundError(f"no such object: {url}")
    if status in (401, 403):
        return PermissionError(f"access refused to {url} ({detail})")
    if status in (408, 429) or status >= 500 or direct:
        return ObjectStoreError(detail, status)
    return UseFsspec(detail)  # a redirect to another region, a request s3fs would shape otherwise


def connection_error(code: int, message: str, url: str) -> Exception:
    """What a libcurl failure without an answer becomes: `ConnectionError` when the connection failed or dropped."""
    detail = f"libcurl error {code}: {message}"[:200]
    if code in _CONNECTION_ERRORS:
        return ConnectionError(detail)
    return UseFsspec(detail)
