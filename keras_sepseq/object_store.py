"""Object storage through obstore: one client per store, credentials from where the environment keeps them.

Every remote scheme is read through [obstore](https://developmentseed.org/obstore/), the Python binding
of the Rust `object_store` crate (Polars, DataFusion and delta-rs read through it):

| URL | store | the store's name |
|---|---|---|
| `s3://bucket/key` (`s3a://`) | `S3Store` (AWS or any S3-compatible endpoint) | the bucket |
| `gs://bucket/key` (`gcs://`) | `GCSStore` | the bucket |
| `az://container/key`, `abfs[s]://container@account.dfs.core.windows.net/key` | `AzureStore` | the container |
| `http(s)://host/path` | `HTTPStore` | `scheme://host` |

`store_for(url, options)` gives the store of `url` and the key within it:
one client per process, store and options, shared by every thread and
sequence that reads it (its connection pool and credentials with it),
made again in a forked child (obstore's runtime does not survive a
fork). `read_once` reads an object once, turning obstore's failures into
the exceptions the error policy knows (`FileNotFoundError`,
`PermissionError`, `RemoteError` with the HTTP status), with messages
that name the URL and never a secret; `keras_sepseq.storage` retries.

`storage_options` take the fsspec-style keys that pandas and Dask users
write (`translate`), and obstore's own configuration keys as they are.

Example:

>>> split_url("s3://bucket/images/0001.png")
('s3', 'bucket', 'images/0001.png')
>>> translate("s3://bucket/a.png", {"key": "AKIA...", "secret": "x", "client_kwargs": {"region_name": "eu-west-1"}}).config
{'access_key_id': 'AKIA...', 'secret_access_key': 'x', 'region': 'eu-west-1'}
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "REMOTE_SCHEMES",
    "RemoteError",
    "Translated",
    "display_url",
    "forget_clients",
    "is_url",
    "list_objects",
    "protocol",
    "read_once",
    "redact",
    "split_url",
    "store_for",
    "translate",
]

REMOTE_SCHEMES = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "azure": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "http": "http",
    "https": "http",
}
"""URL scheme -> the kind of store that reads it."""

_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_url(path: Any) -> bool:
    """Whether `path` is a URL (`scheme://...`) rather than a local path.

    Args:
        path: A path or URL.

    Returns:
        `True` for `s3://...`, `https://...`, `file://...` and the like
        (`file://` URLs are read as local files).

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
        The URL with `user:password@` and any query string or fragment removed.

    Example:

    >>> display_url("https://me:pw@host/a.png?X-Amz-Signature=abc")
    'https://host/a.png'
    """
    if not isinstance(url, str) or _URL.match(url) is None:
        return url
    scheme, rest = url.split("://", 1)
    rest = re.split(r"[?#]", rest, maxsplit=1)[0]
    host, slash, tail = rest.partition("/")
    return f"{scheme}://{host.rsplit('@', 1)[-1]}{slash}{tail}"


class RemoteError(OSError):
    """A read from object storage failed with an HTTP status (or none: a connection that failed or dropped).

    Attributes:
        status: The HTTP status, or `None`.
        transient: Whether reading again may succeed (a certificate that
            is not trusted will not be trusted next time).

    Example:

    >>> RemoteError("s3://b/k: HTTP 503", 503).status
    503
    """

    def __init__(self, message: str, status: int | None = None, *, transient: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.transient = transient


def split_url(url: str) -> tuple[str, str, str]:
    """`(scheme, store name, key)` of an object URL; the key exactly as written (nothing normalised).

    Args:
        url: A remote URL.

    Returns:
        The scheme (lower case), the bucket/container (`scheme://host` for
        HTTP) and the key.

    Raises:
        ValueError: If the scheme is not one obstore reads, or the URL
            names no bucket.

    Example:

    >>> split_url("abfs://data@acct.dfs.core.windows.net/x/1.png")
    ('abfs', 'data@acct.dfs.core.windows.net', 'x/1.png')
    """
    scheme = protocol(url)
    if scheme not in REMOTE_SCHEMES:
        known = ", ".join(sorted(f"{s}://" for s in REMOTE_SCHEMES))
        raise ValueError(f"keras_sepseq reads no {scheme}:// URLs (it reads {known}). Received: {display_url(url)!r}")
    rest = url.split("://", 1)[1]
    if REMOTE_SCHEMES[scheme] == "http":
        host, _, key = rest.partition("/")
        return scheme, f"{scheme}://{host}", key
    name, _, key = rest.partition("/")
    if not name:
        raise ValueError(f"the URL names no bucket or container. Received: {display_url(url)!r}")
    return scheme, name, key


# fsspec-style option -> obstore config key, per kind of store. Values pass as given unless said.
_FSSPEC = {
    "s3": {
        "key": "access_key_id",
        "secret": "secret_access_key",
        "token": "session_token",
        "endpoint_url": "endpoint",
        "region_name": "region",
        "region": "region",
        "anon": "skip_signature",
        "requester_pays": "request_payer",
    },
    "gcs": {"token": "service_account_path", "anon": "skip_signature", "endpoint_url": "base_url"},
    "azure": {
        "account_name": "account_name",
        "account_key": "account_key",
        "sas_token": "sas_key",
        "anon": "skip_signature",
        "endpoint_url": "endpoint",
        "tenant_id": "tenant_id",
        "client_id": "client_id",
        "client_secret": "client_secret",
    },
    "http": {},
}

# obstore's own configuration keys for each kind of store (they pass through as they are).
_OBSTORE = {
    "s3": {
        "access_key_id", "secret_access_key", "session_token", "endpoint", "region", "default_region",
        "skip_signature", "request_payer", "virtual_hosted_style_request", "imdsv1_fallback", "metadata_endpoint",
        "container_credentials_relative_uri", "container_credentials_full_uri", "container_authorization_token_file",
        "role_arn", "role_session_name", "web_identity_token_file", "sts_endpoint", "checksum_algorithm",
        "server_side_encryption", "sse_kms_key_id", "sse_bucket_key_enabled", "unsigned_payload", "s3_express",
        "disable_tagging",
    },
    "gcs": {"service_account", "service_account_path", "service_account_key", "application_credentials",
            "base_url", "bearer_token", "skip_signature"},
    "azure": {
        "account_name", "account_key", "client_id", "client_secret", "tenant_id", "authority_host", "sas_key",
        "token", "use_emulator", "use_fabric_endpoint", "endpoint", "msi_endpoint", "object_id", "msi_resource_id",
        "federated_token_file", "use_azure_cli", "skip_signature", "disable_tagging", "bearer_token",
    },
    "http": set(),
}  # fmt: skip

_GENERAL = {"client_options", "retry_config", "credential_provider", "client_kwargs", "profile", "config_kwargs"}
"""Keys every store takes: obstore's client and retry settings, a credential provider, and fsspec's
`client_kwargs` (`endpoint_url`, `region_name`), `profile` (S3, through boto3) and
`config_kwargs` (`{"s3": {"addressing_style": "virtual"}}`)."""

_NOT_SECRET = {
    "endpoint_url", "endpoint", "region_name", "region", "default_region", "anon", "skip_signature",
    "requester_pays", "request_payer", "profile", "virtual_hosted_style_request", "account_name", "use_emulator",
    "base_url", "client_kwargs", "config_kwargs", "client_options", "retry_config", "s3", "addressing_style",
    "allow_http", "timeout", "connect_timeout", "read_timeout", "user_agent", "pool_idle_timeout",
    "pool_max_idle_per_host", "http1_only", "http2_only", "max_retries", "retry_timeout", "backoff",
    "init_backoff", "max_backoff", "base", "tenant_id", "client_id", "imdsv1_fallback", "checksum_algorithm",
}  # fmt: skip
"""Option names whose values are never secrets: `public_options` keeps only these (an allow-list, so that a
secret under any other name, `headers={"Authorization": ...}` say, is dropped rather than kept)."""


@dataclass
class Translated:
    """What `translate` makes of `storage_options`: obstore's arguments and where credentials come from.

    Attributes:
        kind: `"s3"`, `"gcs"`, `"azure"` or `"http"`.
        config: obstore configuration keys.
        client_options: obstore `ClientConfig`.
        credential_provider: A credential provider, or `None`.
        retry_config: obstore's `RetryConfig` when the options give one.
        source: Where credentials come from, in words (no secret).
        secrets: The secret values, to be struck from any message.
    """

    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    client_options: dict[str, Any] = field(default_factory=dict)
    credential_provider: Any = None
    retry_config: dict[str, Any] | None = None
    source: str = ""
    secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never the values
        return f"Translated(kind={self.kind!r}, config keys={sorted(self.config)}, source={self.source!r})"

    def __reduce__(self):
        raise TypeError("storage credentials are not pickled: each process translates its own options")


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    """Every string value in `options` (at any depth) under a name that is not known to be public."""
    found: list[str] = []
    for name, value in options.items():
        if isinstance(value, Mapping):
            found += _secret_values(value)
        elif isinstance(value, str) and str(name) not in _NOT_SECRET and len(value) >= 4:
            found.append(value)
    return found


def public_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """`storage_options` with only the entries known not to be secret (endpoint, region, anon, profile...).

    An allow-list: a credential under any name (`headers={"Authorization": ...}`,
    a provider object) is dropped. Used for what is pickled to process
    workers, shown in `repr` or kept in state.

    Args:
        options: Storage options, possibly nested.

    Returns:
        A copy with the public entries, at every level.

    Example:

    >>> public_options({"key": "AKIA...", "headers": {"Authorization": "Bearer x"}, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}})
    {'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000'}}
    """
    if not options:
        return {}
    public: dict[str, Any] = {}
    for name, value in options.items():
        if str(name) not in _NOT_SECRET:
            continue
        if isinstance(value, Mapping):
            public[name] = public_options(value)
        elif isinstance(value, (str, int, float, bool, type(None))):
            public[name] = display_url(value) if isinstance(value, str) else value
    return public


def _closest(name: str, known: set[str]) -> str:
    match = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def translate(url: str, options: Mapping[str, Any] | None) -> Translated:
    """obstore's arguments for the store of `url` from `storage_options` (fsspec-style or obstore's own keys).

    Credentials come, in this order, from the options (keys, a
    `credential_provider`, a `profile` through boto3), from a shared AWS
    config or credentials file or `AWS_PROFILE` (through boto3, which
    refreshes SSO and assumed-role credentials), else from obstore's own
    chain: environment variables, web identity, container and instance
    roles (S3), application default credentials (GCS), and the Azure
    environment (keys, SAS, managed identity, workload identity).

    Args:
        url: An object URL (its scheme picks the store).
        options: The storage options.

    Returns:
        A `Translated`.

    Raises:
        ValueError: If an option is unknown (named, with the closest known one).
        TypeError: If `client_kwargs` or `config_kwargs` is not a dict.
        ImportError: If `profile` is given and boto3 is not installed.

    Example:

    >>> translate("s3://b/k", {"secrt": "x"})
    Traceback (most recent call last):
    ...
    ValueError: unknown storage option 'secrt' for s3:// URLs; did you mean 'secret'?
    """
    scheme = protocol(url)
    kind = REMOTE_SCHEMES.get(scheme, "")
    options = dict(options or {})
    out = Translated(kind=kind, secrets=tuple(_secret_values(options)))
    fsspec_keys, own = _FSSPEC.get(kind, {}), _OBSTORE.get(kind, set())
    for nested in ("client_kwargs", "config_kwargs"):
        if nested in options and not isinstance(options[nested], Mapping):
            raise TypeError(f"storage option {nested!r} must be a dict. Received: {type(options[nested]).__name__}")
    flat = {k: v for k, v in options.items() if k not in ("client_kwargs", "config_kwargs")}
    kwargs = dict(options.get("client_kwargs") or {})
    for name in list(kwargs):
        if name in ("endpoint_url", "region_name"):
            flat.setdefault(name, kwargs.pop(name))
        elif name == "verify" and kwargs[name] is False:
            out.client_options["allow_invalid_certificates"] = True
            kwargs.pop(name)
    if kwargs:
        name = sorted(kwargs)[0]
        raise ValueError(
            f"unknown storage option 'client_kwargs.{name}' for {scheme}:// URLs (known: endpoint_url, region_name, verify)"
        )
    style = dict(options.get("config_kwargs") or {}).get("s3", {}).get("addressing_style")
    if style is not None:
        flat.setdefault("virtual_hosted_style_request", style == "virtual")
    profile = flat.pop("profile", None)
    out.client_options.update(dict(flat.pop("client_options", None) or {}))
    retry = flat.pop("retry_config", None)
    if retry is not None:
        out.retry_config = dict(retry)
    out.credential_provider = flat.pop("credential_provider", None)
    for name, value in flat.items():
        if name in fsspec_keys:
            key = fsspec_keys[name]
            if name == "anon":
                value = bool(value)
            if name == "requester_pays":
                value = bool(value)
            out.config[key] = value
        elif name in own:
            out.config[name] = value
        else:
            known = set(fsspec_keys) | own | _GENERAL
            raise ValueError(f"unknown storage option {name!r} for {scheme}:// URLs{_closest(name, known)}")
    endpoint = str(out.config.get("endpoint") or out.config.get("base_url") or "")
    if endpoint.startswith("http://") or kind == "http" and scheme == "http":
        out.client_options.setdefault("allow_http", True)
    if kind == "azure" and out.config.get("use_emulator"):
        out.client_options.setdefault("allow_http", True)
    bundle = _ca_bundle()
    if bundle and "root_certificate" not in out.client_options:
        out.client_options["root_certificate"] = bundle
    out.source = _credential_source(kind, out, profile)
    return out


def _ca_bundle() -> str | None:
    """The PEM text of the CA bundle users point to with AWS_CA_BUNDLE, SSL_CERT_FILE or REQUESTS_CA_BUNDLE."""
    for name in ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        path = os.environ.get(name)
        if path:
            try:
                with open(path, encoding="ascii") as f:
                    return f.read()
            except OSError as e:
                raise OSError(f"the CA bundle named by ${name} cannot be read: {path}: {e.strerror}") from None
    return None


def _aws_files() -> bool:
    """Whether this user has a shared AWS config or credentials file (profiles, SSO) or names a profile."""
    if os.environ.get("AWS_PROFILE"):
        return True
    home = os.path.expanduser("~")
    for variable, default in (("AWS_SHARED_CREDENTIALS_FILE", "credentials"), ("AWS_CONFIG_FILE", "config")):
        if os.path.isfile(os.environ.get(variable) or os.path.join(home, ".aws", default)):
            return True
    return False


def _credential_source(kind: str, out: Translated, profile: str | None) -> str:
    """Chooses where credentials come from (setting a boto3 provider where profiles are in play); says which."""
    config = out.config
    if out.credential_provider is not None:
        return f"credential provider {type(out.credential_provider).__name__}"
    if kind == "http":
        return "none (HTTP)"
    if config.get("skip_signature"):
        return "anonymous (unsigned requests)"
    if kind == "s3":
        if config.get("access_key_id"):
            return "storage_options keys"
        if profile is not None or (not os.environ.get("AWS_ACCESS_KEY_ID") and _aws_files()):
            try:
                import boto3
                from obstore.auth.boto3 import Boto3CredentialProvider
            except ImportError as e:
                raise ImportError(
                    f"AWS profiles are read through boto3, which is not installed ({e}): "
                    "pip install 'keras-sepseq[remote]'"
                ) from None
            session = boto3.Session(profile_name=profile)
            if session.get_credentials() is not None:
                out.credential_provider = Boto3CredentialProvider(session)
                config.setdefault("region", session.region_name or os.environ.get("AWS_REGION") or "us-east-1")
                return f"AWS profile {session.profile_name!r} (boto3, refreshed)"
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            return "environment variables (AWS_ACCESS_KEY_ID)"
        return "obstore's AWS chain (web identity, container or instance role)"
    if kind == "gcs":
        if config.get("service_account_path") or config.get("service_account") or config.get("service_account_key"):
            return "service account file or key"
        if os.environ.get("GOOGLE_SERVICE_ACCOUNT") or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            return "environment variables (GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS)"
        return "obstore's Google chain (GOOGLE_* variables, application default credentials, metadata server)"
    if config.get("account_key") or config.get("sas_key") or config.get("token"):
        return "storage_options keys"
    for variable in ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_SAS_KEY"):
        if os.environ.get(variable):
            return f"environment variables ({variable})"
    if config.get("use_emulator"):
        return "Azurite emulator account"
    return "obstore's Azure chain (AZURE_* variables, managed or workload identity, Azure CLI)"


_STORES: dict[tuple, tuple[Any, Translated]] = {}
_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    _SEEN_ENVIRONMENT[0] = -1.0  # (regions learned stay: they hold no connection)
    _STORES.clear()  # a client made before fork() is tied to the parent's runtime and connections


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


_ENVIRONMENT = ("AWS_", "GOOGLE_", "AZURE_", "SSL_CERT", "REQUESTS_CA", "CURL_CA")


_SEEN_ENVIRONMENT: list[Any] = [-1.0, ()]


def _environment() -> tuple:
    """The variables that choose credentials and certificates, looked at again at most once a second."""
    now = time.monotonic()
    if now - _SEEN_ENVIRONMENT[0] > 1.0:
        _SEEN_ENVIRONMENT[:] = [now, tuple(i for i in os.environ.items() if i[0].startswith(_ENVIRONMENT))]
    return _SEEN_ENVIRONMENT[1]


def forget_clients() -> None:
    """Drops every client this process made: the next read makes new ones, from the environment as it is now.

    Regions learned from redirects are forgotten too. Clients notice a changed environment (`AWS_*`, `GOOGLE_*`, `AZURE_*`,
    CA bundle variables) on their own within a second; this is for when
    that second matters.

    Example:

    >>> forget_clients()
    """
    with _LOCK:
        _SEEN_ENVIRONMENT[0] = -1.0
        _STORES.clear()
        _REGIONS.clear()


def _fingerprint(options: Mapping[str, Any] | None) -> str:
    return repr(sorted((options or {}).items(), key=lambda kv: str(kv[0])))


def store_for(url: str, options: Mapping[str, Any] | None = None) -> tuple[Any, str, Translated]:
    """The obstore store that reads `url`, the key within it and how it was set up; one per process and store.

    Args:
        url: An object URL.
        options: The storage options.

    Returns:
        `(store, key, translated)`.

    Raises:
        ImportError: If obstore is not installed (names the extra).
        ValueError: If the URL or an option is not understood.

    Example:

    >>> store, key, how = store_for("s3://bucket/a.png", {"anon": True, "region_name": "us-east-1"})
    >>> key, how.source
    ('a.png', 'anonymous (unsigned requests)')
    """
    scheme, name, key = split_url(url)
    region = _REGIONS.get((scheme, name)) if REMOTE_SCHEMES[scheme] == "s3" else None
    cache_key = (scheme, name, _fingerprint(options), _environment(), region)  # a credential set later: a new client
    with _LOCK:
        found = _STORES.get(cache_key)
    if found is None:
        found = _make(scheme, name, url, options, region)
        with _LOCK:
            found = _STORES.setdefault(cache_key, found)
    return found[0], key, found[1]


def _make(
    scheme: str, name: str, url: str, options: Mapping[str, Any] | None, region: str | None
) -> tuple[Any, Translated]:
    try:
        from obstore.store import AzureStore, GCSStore, HTTPStore, S3Store
    except ImportError as e:
        raise ImportError(
            f"reading {scheme}:// URLs needs obstore, which is not installed ({e}): pip install 'keras-sepseq[remote]'"
        ) from None
    how = translate(url, options)
    config: Any = dict(how.config)
    if region is not None:
        config["region"] = region  # the bucket's own, learned from a redirect (`_follow_region`)
    retry = how.retry_config or {"max_retries": 0}  # keras_sepseq.storage retries, and counts
    common: Any = {"client_options": how.client_options or None, "retry_config": retry}
    try:
        if how.kind == "http":
            return HTTPStore(name, **common), how
        if how.credential_provider is not None:
            common["credential_provider"] = how.credential_provider
        if how.kind == "s3":
            config.setdefault(
                "region", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
            )
            return S3Store(name, config=config, **common), how
        if how.kind == "gcs":
            return GCSStore(name, config=config, **common), how
        container, _, host = name.partition("@")
        if host and "account_name" not in config:
            config["account_name"] = host.split(".", 1)[0]
        return AzureStore(container, config=config, **common), how
    except Exception as e:  # obstore's configuration errors: named, without secrets
        raise ValueError(
            f"cannot set up the {how.kind} store for {display_url(url)!r}: {redact(str(e), how.secrets)}"
        ) from None


_TLS = "TLS: the server's certificate is not trusted (set AWS_CA_BUNDLE or SSL_CERT_FILE to its CA)"
_CAUSES = (
    ("InvalidCertificate", _TLS, False),
    ("UnknownIssuer", _TLS, False),
    ("BareRedirect", "S3 redirected the request: the bucket is in another region (give its region_name)", False),
    ("ConnectionRefused", "connection refused: is the endpoint right?", True),
    ("Connection refused", "connection refused: is the endpoint right?", True),
    ("dns error", "the host name does not resolve: is the endpoint right?", True),
    ("TimedOut", "timed out", True),
    ("IncompleteMessage", "the connection closed before the answer was complete", True),
    ("connection closed", "the connection closed before the answer was complete", True),
    ("ConnectionReset", "the connection was reset", True),
)
"""Words in obstore's error chain, and what they mean to a user (the chain itself spans dozens of lines)."""

_STATUS = re.compile(r"status(?: code)?:? (\d{3})")
_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'<>]+")


def redact(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """`text` without the given secret values, and every URL in it without user, password or query.

    Example:

    >>> redact("GET https://u:pw@h/k?X-Amz-Signature=s failed; key SECRET", ["SECRET"])
    'GET https://h/k failed; key ***'
    """
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    return _URL_IN_TEXT.sub(lambda m: display_url(m.group(0)), text)


def _first_line(text: str) -> str:
    return " ".join(text.strip().splitlines()[:1])[:300]


def mapped_error(error: BaseException, url: str, how: Translated | None) -> BaseException:
    """The exception the error policy knows for what obstore raised reading `url`, naming it without secrets."""
    shown = display_url(url)
    text = str(error)
    status_match = _STATUS.search(text)
    status = int(status_match.group(1)) if status_match else None
    if status is not None:  # the store's own words (S3's and Azure's XML <Code> and <Message>), not the request
        said = [
            m.group(1).strip() for tag in ("Code", "Message") if (m := re.search(f"<{tag}>(.*?)</{tag}>", text, re.S))
        ]
        detail = f"HTTP {status}" + (f": {' '.join(said)}" if said else "")
    else:
        detail = _first_line(re.sub(r"^Generic \w+ error: ", "", text))
        cause = next(((why, again) for token, why, again in _CAUSES if token in text), None)
        if cause is not None:
            detail = f"{cause[0]} ({detail})"
            if not cause[1]:  # asking again gets the same answer
                return RemoteError(redact(detail, how.secrets if how else ())[:400], None, transient=False)
    detail = redact(detail, how.secrets if how else ())[:300]
    names = {cls.__name__ for cls in type(error).__mro__}
    if isinstance(error, FileNotFoundError) or "NotFoundError" in names or status == 404:
        return FileNotFoundError(f"no such object: {shown}")
    if (
        isinstance(error, PermissionError)
        or names & {"PermissionDeniedError", "UnauthenticatedError"}
        or status in (401, 403)
    ):
        return PermissionError(f"access refused to {shown} ({detail})")
    if "InvalidPathError" in names or (type(error) is ValueError and "parsing Path" in str(error)):
        return ValueError(
            f"the object key in {shown!r} is not a valid key (obstore refuses it; nothing was sent): {detail}"
        )
    return RemoteError(detail, status)


def read_once(url: str, options: Mapping[str, Any] | None = None) -> bytes:
    """Reads the whole object at `url` once (no retries here), through its store's client.

    Args:
        url: An object URL.
        options: The storage options.

    Returns:
        The object's bytes.

    Raises:
        FileNotFoundError: If the object does not exist.
        PermissionError: If access is refused (401, 403).
        ValueError: If the key is not one obstore sends as written (a `..`
            segment, say): nothing is requested.
        RemoteError: Any other failure, with its HTTP status if it had one.
    """
    import obstore

    store, key, how = store_for(url, options)
    if how.kind == "http" and ("?" in key or "#" in key):
        return _read_with_query(url, how)
    try:
        return bytes(obstore.get(store, key).bytes())
    except Exception as e:
        if how.kind == "s3" and "BareRedirect" in str(e) and _follow_region(url, how):
            return read_once(url, options)  # once: the region learned is used from now on
        raise mapped_error(e, url, how) from None


_WARNED: set[str] = set()

_REGIONS: dict[tuple[str, str], str] = {}
"""`{(scheme, bucket): region}`: buckets found, by a redirect, to live in another region than the one given."""


def _follow_region(url: str, how: Translated) -> bool:
    """After S3 answered a redirect (the bucket is in another region), learns the bucket's region; True if new.

    Asks as boto3 does: an unsigned HEAD of the bucket, whose answer names its region in
    `x-amz-bucket-region` whatever its status. Warns once per bucket, naming the region to give.
    """
    import urllib.error
    import urllib.request
    import warnings

    scheme, bucket, _ = split_url(url)
    endpoint = str(how.config.get("endpoint") or "")
    target = f"{endpoint.rstrip('/')}/{bucket}" if endpoint else f"https://{bucket}.s3.amazonaws.com"
    try:
        answer = urllib.request.urlopen(urllib.request.Request(target, method="HEAD"), timeout=10)
        region = answer.headers.get("x-amz-bucket-region")
    except urllib.error.HTTPError as e:
        region = e.headers.get("x-amz-bucket-region")
    except OSError:
        return False
    given = how.config.get("region") or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region or region == given or _REGIONS.get((scheme, bucket)) == region:
        return False
    _REGIONS[(scheme, bucket)] = region
    warnings.warn(
        f"the bucket {scheme}://{bucket} is in region {region!r}, not {given or 'us-east-1'!r}: reading it there "
        f"from now on (give region_name={region!r} in storage_options to skip the redirect)",
        stacklevel=4,
    )
    return True


def _read_with_query(url: str, how: Translated) -> bytes:
    """Reads an http(s) URL with a query (a signed URL, say) through Python's urllib: obstore's HTTPStore sends
    paths only, so the query would reach the server as part of the file name. Warns once per process."""
    import ssl
    import urllib.error
    import urllib.request
    import warnings

    if "query" not in _WARNED:
        _WARNED.add("query")
        warnings.warn(
            "keras_sepseq reads http(s):// URLs with a query string (signed URLs) through Python's urllib, "
            "not obstore: obstore's HTTPStore cannot send a query. They are retried and counted as the others.",
            stacklevel=4,
        )
    bundle = how.client_options.get("root_certificate")
    context = ssl.create_default_context(cadata=bundle if isinstance(bundle, str) else None)
    if how.client_options.get("allow_invalid_certificates"):
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    shown = display_url(url)
    try:
        with urllib.request.urlopen(url.split("#", 1)[0], timeout=60, context=context) as answer:
            return answer.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise FileNotFoundError(f"no such object: {shown}") from None
        if e.code in (401, 403):
            raise PermissionError(f"access refused to {shown} (HTTP {e.code})") from None
        raise RemoteError(f"HTTP {e.code}: {e.reason}", e.code) from None
    except urllib.error.URLError as e:
        certificate = isinstance(e.reason, ssl.SSLCertVerificationError)
        raise RemoteError(redact(f"{e.reason}"[:300], how.secrets), None, transient=not certificate) from None
    except (OSError, TimeoutError) as e:
        raise RemoteError(redact(f"{type(e).__name__}: {e}"[:300], how.secrets)) from None


def list_objects(prefix_url: str, options: Mapping[str, Any] | None = None, page: int = 1000) -> Iterator[list[str]]:
    """The object URLs under `prefix_url` (recursively), a page at a time, in the store's order.

    Args:
        prefix_url: `scheme://bucket/prefix` (a folder prefix ends with `/`).
        options: The storage options.
        page: Keys per page (S3 answers at most 1,000 per request).

    Yields:
        Lists of URLs, spelt with the scheme and bucket of `prefix_url`.

    Raises:
        ValueError: For `http(s)://` URLs, which cannot be listed (use a manifest).
    """
    import obstore

    scheme, name, prefix = split_url(prefix_url)
    if REMOTE_SCHEMES[scheme] == "http":
        raise ValueError(
            f"web servers cannot be listed: give the paths, or a manifest (read_manifest). Received: {display_url(prefix_url)!r}"
        )
    store, _, how = store_for(prefix_url, options)
    folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    listed = 0
    try:
        for chunk in obstore.list(store, prefix=folder or None, chunk_size=page):
            listed += 1
            yield [f"{scheme}://{name}/{entry['path']}" for entry in chunk if entry["path"].startswith(prefix)]
    except Exception as e:
        if not listed and how.kind == "s3" and "BareRedirect" in str(e) and _follow_region(prefix_url, how):
            yield from list_objects(prefix_url, options, page)
            return
        raise mapped_error(e, prefix_url, how) from None
