"""Listing files and objects: glob patterns (local or URLs) in pages, and manifests that replace listing.

- `glob_files` lists a pattern with one paginated listing per prefix (the
  file system's `glob`), never a request per file;
- `read_manifest` reads a text or CSV file of paths (local or remote), and
  `matching` matches glob patterns against them, so nothing is listed;
- `join_path` takes a relative path from a folder or a URL prefix.

Example:

>>> matching("s3://b/img/*.png", ["s3://b/img/1.png", "s3://b/lbl/1.npy"])
['s3://b/img/1.png']
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from keras_sepseq.object_store import list_objects
from keras_sepseq.storage import (
    ATTEMPTS,
    BACKOFF_LIMIT,
    BACKOFF_SECONDS,
    StorageStats,
    display_url,
    is_transient,
    is_url,
    local_path,
    named_error,
    protocol,
    read_url,
)

__all__ = ["glob_files", "join_path", "matching", "read_manifest"]


def glob_files(
    pattern: str | os.PathLike, options: Mapping[str, Any] | None = None, *, stats: StorageStats | None = None
) -> list[str]:
    """The files (not folders) a glob pattern matches, sorted; `**` recurses. Local paths or URLs.

    For a URL, the store lists the prefix before the first wildcard once,
    in pages (S3 lists 1,000 keys per request), and never asks about
    files one at a time; `http(s)://` servers cannot be listed (use a
    manifest).

    Args:
        pattern: A glob pattern: a local one, or a URL such as
            `"s3://bucket/images/*.png"`.
        options: Storage options for a URL.
        stats: Where the listing's pages are counted (`list_pages`).

    Returns:
        The matching paths, as URLs with their scheme for a URL pattern.

    Raises:
        ImportError: If obstore is missing.
        ValueError: For a pattern on a web server, which cannot be listed.
        OSError: If listing fails (after retries of transient failures).

    Example:

    >>> glob_files("data/image_*.png")  # doctest: +SKIP
    ['data/image_000.png', 'data/image_001.png']
    """
    import glob

    text = os.fspath(pattern)
    if not is_url(text):
        return sorted(p for p in glob.glob(text, recursive=True) if not os.path.isdir(p))
    if protocol(text) == "file":
        root = local_path(text)
        return sorted(f"file://{p}" for p in glob.glob(root, recursive=True) if not os.path.isdir(p))
    prefix = re.split(r"[*?\[]", text, maxsplit=1)[0]
    regex = re.compile(_translate(text))
    for attempt in range(ATTEMPTS):
        found: list[str] = []
        pages = 0
        try:
            for page in list_objects(prefix, options):
                pages += 1
                found += [url for url in page if regex.fullmatch(url)]
            break
        except (ImportError, ValueError):
            raise
        except Exception as e:
            if attempt + 1 < ATTEMPTS and is_transient(e):
                time.sleep(min(BACKOFF_LIMIT, BACKOFF_SECONDS * 2**attempt))
                continue
            raise named_error(e, display_url(text), attempt + 1) from e
    if stats is not None:
        stats.add(list_pages=pages)
    return sorted(found)


def read_manifest(
    path: str | os.PathLike, options: Mapping[str, Any] | None = None, *, column: str | None = None
) -> list[str]:
    """The paths a manifest lists: a text file with one path per line, or a CSV file's column.

    Relative paths are taken from the manifest's folder (or bucket
    prefix). Blank lines and lines starting with `#` are skipped.

    Args:
        path: The manifest, local or a URL.
        options: Storage options for a URL.
        column: The CSV column holding paths; a `.csv` manifest's first
            column by default.

    Returns:
        The paths, in the manifest's order.

    Raises:
        FileNotFoundError: If the manifest does not exist.
        ValueError: If it lists no path, or has no column `column`.

    Example:

    >>> read_manifest("s3://bucket/train.txt")  # doctest: +SKIP
    ['s3://bucket/images/0001.png', 's3://bucket/images/0002.png']
    """
    import csv

    text = os.fspath(path)
    if is_url(text):
        data = read_url(text, options).decode("utf-8-sig")
        folder = text.rsplit("/", 1)[0]
    else:
        with open(text, encoding="utf-8-sig") as f:
            data = f.read()
        folder = os.path.dirname(os.path.abspath(text))
    if text.lower().endswith(".csv") or column is not None:
        rows = list(csv.reader(io.StringIO(data)))
        header = rows[0] if rows else []
        name = column if column is not None else (header[0] if header else "")
        if name not in header:
            raise ValueError(f"the manifest {display_url(text)!r} has no column {name!r}; its columns: {header}")
        k = header.index(name)
        entries = [row[k].strip() for row in rows[1:] if len(row) > k and row[k].strip()]
    else:
        entries = [line.strip() for line in data.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not entries:
        raise ValueError(f"the manifest {display_url(text)!r} lists no path")
    return [join_path(folder, entry) for entry in entries]


def join_path(folder: str, entry: str) -> str:
    """`entry` taken from `folder` (a local folder or a URL prefix), unless it is absolute or a URL itself.

    Args:
        folder: Where relative entries start from.
        entry: A path or URL.

    Returns:
        The joined path.

    Example:

    >>> join_path("s3://bucket/train", "images/1.png"), join_path("/data", "s3://other/2.png")
    ('s3://bucket/train/images/1.png', 's3://other/2.png')
    """
    if is_url(entry) or os.path.isabs(entry):
        return entry
    if is_url(folder):
        return f"{folder.rstrip('/')}/{entry}"
    return os.path.join(folder, entry)


def matching(pattern: str, paths: list[str]) -> list[str]:
    """The entries of `paths` that glob `pattern` matches (`**` recursive), sorted: listing by manifest.

    Args:
        pattern: A glob pattern (a URL or a path).
        paths: Candidate paths, as `read_manifest` returns them.

    Returns:
        The matching paths, sorted.

    Example:

    >>> matching("s3://b/img/*.png", ["s3://b/img/1.png", "s3://b/img/sub/2.png", "s3://b/lbl/1.npy"])
    ['s3://b/img/1.png']
    """
    regex = re.compile(_translate(pattern))
    return sorted(p for p in paths if regex.fullmatch(p))


def _translate(pattern: str) -> str:
    """A regular expression for a glob pattern: `*` and `?` stay within a folder, `**/` spans folders."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape("["))
                i += 1
            else:
                body = pattern[i + 1 : end]
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)
