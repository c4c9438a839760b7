"""What a model looks like in the store: its numeric versions and their objects.

A listing is paged (1,000 keys a page) and each page needs the previous page's token, so
one listing of a large model is a chain of round trips. The shape of the model's last
complete sync (objects per version, from the manifest) picks the cheaper of two ways:
- one listing of the model's prefix, page after page: a model of fewer than 1,000 files
  costs one request;
- when that takes more round trips, one delimited listing finds the version directories
  and each version is listed in parallel (a 10-version model of 1,000 files a version:
  two round trips instead of ten).
The next page of a listing is asked for as soon as a page's continuation token is seen,
while the page is parsed. A page byte for byte the same as one seen last time is not
parsed again, and a listing the same as last time gives last time's RemoteModel; a
listing whose digest is the one the caller recorded after its last complete sync is not
parsed at all (`RemoteModel.unchanged`). A sync of an unchanged model costs its requests
and little else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http.client
import threading
import random
import re
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_plus
from xml.etree import ElementTree

import urllib3.exceptions

from agent import log as agent_log
from agent.modelstore.errors import S3Error, s3_error
from agent.modelstore.etag import ETag, parse_etag
from agent.modelstore.transport import Transport
from agent.serving.versions import VERSION_RULE

log = agent_log.get(__name__)

# TF Serving's version directories: a non-negative integer, written canonically.
# One version rule with the model server (TF Serving's int64).
VERSION_RE = VERSION_RULE
# Put first and deleted last by `models push`: a version holding it is still being uploaded.
PUSH_MARKER = ".inference-agent-push"


@dataclass(frozen=True)
class RemoteObject:
    """One object of a version: `rel` is its path inside the version directory."""

    key: str
    rel: str
    size: int
    etag: ETag
    modified: float = 0.0  # LastModified, epoch seconds (the store's clock)


@dataclass
class RemoteModel:
    """Every loadable version of one model in the store."""

    versions: dict[int, dict[str, RemoteObject]] = field(default_factory=dict)
    # Keys or version prefixes that cannot become local files, with the reason.
    ignored: dict[str, str] = field(default_factory=dict)
    # Versions a `models push` is still uploading (marker present): when the marker was
    # written, by the store's clock. Never taken, never retired.
    uploading: dict[int, float] = field(default_factory=dict)
    objects_listed: int = 0
    # The store's clock when it was listed (its Date header), to judge how fresh objects are.
    server_time: float = 0.0
    # SHA-1 (hex) of the listing's pages, byte for byte.
    digest: str = ""
    # True when the digest is the one the caller knew: nothing above was parsed.
    unchanged: bool = False


def safe_relpath(rel: str) -> str | None:
    """`rel` when it is a safe relative file path (no '..', '.', empty parts or NUL), else None."""
    if not rel or rel.startswith("/") or "\x00" in rel or len(rel.encode()) > 4000:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or len(p.encode()) > 255 for p in parts):
        return None
    return rel


def _conflicts(rels: list[str]) -> list[str]:
    """Paths that are both a file and a directory of other files (cannot exist on disk)."""
    files = set(rels)
    bad = []
    for rel in rels:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                bad.append("/".join(parts[:i]))
    return sorted(set(bad))


_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
# A page holds at most 1,000 keys of at most 1 KiB (3 KiB URL-encoded): a bigger answer
# is not a listing, and is not read further.
MAX_PAGE_BYTES = 16 << 20
MAX_PAGES = 1000
PAGE_KEYS = 1000  # S3's largest page
_RETRY_STATUS = {500, 502, 503, 504, 429}
_RETRYABLE = (urllib3.exceptions.HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)
# The continuation token, found without parsing the page (the parse must agree).
_TOKEN = re.compile(rb"<NextContinuationToken>([^<]{1,4096})</NextContinuationToken>")
_TRUNCATED = re.compile(rb"<IsTruncated>\s*true\s*</IsTruncated>", re.IGNORECASE)


@dataclass
class _Page:
    """One ListObjectsV2 answer: (key, size, etag, modified) of each object, common prefixes."""

    objects: list[tuple[str, int, str, float]]
    prefixes: list[str]
    date: float
    next_token: str | None


@dataclass
class _Memo:
    """The last listing of one prefix: each page's parse by its digest, and the model."""

    digests: list[bytes]
    pages: dict[bytes, _Page]
    model: RemoteModel


class _Budget:
    """The listing pages one model may take, over all its listings: a store that never
    stops paging, or lists a million version directories, is not a model."""

    def __init__(self, prefix: str):
        self._left = MAX_PAGES
        self._prefix = prefix
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left < 0:
                raise ValueError(f"more than {MAX_PAGES * 1000} objects under {self._prefix!r}: not a model")


# (bucket URL, prefix) -> its last listing; a few models per agent.
_memos: OrderedDict[tuple[str, str], _Memo] = OrderedDict()
_memos_lock = threading.Lock()
_MEMOS = 8


def _pages(transport: Transport, prefix: str, attempts: int, memo: _Memo | None, defer: bool,
           budget: _Budget, delimiter: str = "") -> tuple[list[_Page | tuple[dict[str, str], bytes]], list[bytes]]:
    """Every page of one listing, and the digest of each. Signed and parsed here rather
    than by botocore, whose parser costs a quarter of a second per 1,000 keys: most of a
    no-op sync. The next page is requested while this one is parsed; a page identical
    to one of `memo` is taken from it. With `defer`, pages come back unparsed, as
    (headers, body)."""
    pages: list[_Page | tuple[dict[str, str], bytes]] = []
    digests: list[bytes] = []

    def fetch(token: str | None) -> tuple[dict[str, str], bytes]:
        budget.take()
        params = {"list-type": "2", "prefix": prefix, "encoding-type": "url", "max-keys": str(PAGE_KEYS)}
        if delimiter:
            params["delimiter"] = delimiter
        if token:
            params["continuation-token"] = token
        return _retrying(lambda: _fetch(transport, params), attempts)

    with ThreadPoolExecutor(1, thread_name_prefix="modellist") as ahead:
        pending: Future | None = ahead.submit(fetch, None)
        while pending is not None:
            headers, body = pending.result()
            token = _peek_token(body)
            pending = ahead.submit(fetch, token) if token else None
            digests.append(hashlib.sha1(body).digest())
            if defer:
                pages.append((headers, body))
            else:
                pages.append(_parse_page(headers, body, token, memo))
    return pages, digests


def _parse_page(headers: dict[str, str], body: bytes, token: str | None, memo: _Memo | None) -> _Page:
    """The page parsed (or taken from `memo` when identical); `token` is what a quick scan found."""
    known = memo.pages.get(hashlib.sha1(body).digest()) if memo is not None else None
    page = dataclasses.replace(known, date=_date(headers.get("date"))) if known else _parse(headers, body)
    if page.next_token != token:
        raise ValueError("a listing page whose continuation token cannot be read")
    return page


def _peek_token(body: bytes) -> str | None:
    """The page's continuation token, if it is truncated (a quick scan; see _parse)."""
    if not _TRUNCATED.search(body):
        return None
    found = _TOKEN.search(body)
    return found.group(1).decode("utf-8", "replace") if found else None


def _retrying(call: Any, attempts: int) -> Any:
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return call()
        except S3Error as e:
            if e.status not in _RETRY_STATUS or attempt >= attempts:
                raise
        except _RETRYABLE:
            if attempt >= attempts:
                raise
        time.sleep(min(2.0, 0.1 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _fetch(transport: Transport, params: dict[str, str]) -> tuple[dict[str, str], bytes]:
    """(headers, body) of one ListObjectsV2 answer of 200; bounded before it is read whole."""
    answer = transport.request("", params)
    raw = answer.body
    try:
        body = raw.read(MAX_PAGE_BYTES + 1)
    except BaseException:
        raw.close()
        raise
    if len(body) > MAX_PAGE_BYTES:
        raw.close()  # the rest is not read: this connection cannot be reused
    else:
        raw.release_conn()
    if answer.status != 200:
        raise s3_error(answer.status, body[:65536], "ListObjectsV2")
    if len(body) > MAX_PAGE_BYTES:
        raise ValueError(f"a listing page of more than {MAX_PAGE_BYTES >> 20} MiB")
    return answer.headers, body


def _parse(headers: dict[str, str], body: bytes) -> _Page:
    root = ElementTree.fromstring(body)
    encoded = (root.findtext(f"{_NS}EncodingType") or "") == "url"
    decode = unquote_plus if encoded else str
    objects = [
        (
            decode(c.findtext(f"{_NS}Key") or ""),
            int(c.findtext(f"{_NS}Size") or 0),
            c.findtext(f"{_NS}ETag") or "",
            _timestamp(c.findtext(f"{_NS}LastModified") or ""),
        )
        for c in root.iterfind(f"{_NS}Contents")
    ]
    prefixes = [decode(p.findtext(f"{_NS}Prefix") or "") for p in root.iterfind(f"{_NS}CommonPrefixes")]
    truncated = (root.findtext(f"{_NS}IsTruncated") or "").strip().lower() == "true"
    token = root.findtext(f"{_NS}NextContinuationToken") if truncated else None
    if truncated and not token:
        raise ValueError("a truncated listing page without a continuation token")
    return _Page(objects, prefixes, _date(headers.get("date")), token)


def _timestamp(value: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


# Version directories listed at once when a model is listed version by version.
LIST_STREAMS = 8


def split_saves_round_trips(objects_per_version: list[int]) -> bool:
    """Whether a delimited listing then one listing per version, in parallel, takes fewer
    round trips than one listing of the whole model, for versions of these sizes."""
    if not objects_per_version:
        return False
    whole = -(-sum(objects_per_version) // PAGE_KEYS)
    split = 1 + max(-(-n // PAGE_KEYS) for n in objects_per_version)
    return split < whole


def _listings(transport: Transport, prefix: str, attempts: int, memo: _Memo | None, defer: bool,
              split: bool) -> tuple[list[_Page | tuple[dict[str, str], bytes]], list[bytes], dict[str, str]]:
    """The pages of the model's listing (one listing, or one per version with `split`),
    their digests, and the directories next to the versions that are not versions."""
    budget = _Budget(prefix)
    if not split:
        return *_pages(transport, prefix, attempts, memo, defer, budget), {}
    tops, digests = _pages(transport, prefix, attempts, memo, False, budget, delimiter="/")
    ignored: dict[str, str] = {}
    versions = []
    for page in tops:
        assert isinstance(page, _Page)
        for sub in page.prefixes:
            name = sub[len(prefix):].rstrip("/") if sub.startswith(prefix) else ""
            if VERSION_RE.match(name) and sub == f"{prefix}{name}/":
                versions.append(sub)
            elif sub.startswith(prefix):
                ignored[sub] = "not a numeric version directory"
    pages: list[_Page | tuple[dict[str, str], bytes]] = list(tops)
    if versions:
        with ThreadPoolExecutor(min(LIST_STREAMS, len(versions)), thread_name_prefix="modellist") as pool:
            for more, more_digests in pool.map(lambda v: _pages(transport, v, attempts, memo, defer, budget),
                                               sorted(versions)):
                pages += more
                digests += more_digests
    return pages, digests, ignored


def _list(transport: Transport, prefix: str, attempts: int, known: str, split: bool) -> RemoteModel:
    """List and parse (blocking); see the module docstring for what is not parsed again."""
    key = (transport.signer.base_url, prefix)
    with _memos_lock:
        memo = _memos.get(key)
    raw, digests, ignored = _listings(transport, prefix, attempts, memo, bool(known), split)
    digest = hashlib.sha1(b"".join(digests)).hexdigest()
    if known and digest == known:
        dates = [p.date if isinstance(p, _Page) else _date(p[0].get("date")) for p in raw]
        count = sum(len(p.objects) if isinstance(p, _Page) else p[1].count(b"<Contents>") for p in raw)
        return RemoteModel(objects_listed=count, server_time=max(dates, default=0.0) or time.time(),
                           digest=digest, unchanged=True)
    pages = [p if isinstance(p, _Page) else _parse_page(p[0], p[1], _peek_token(p[1]), memo) for p in raw]
    now = max((page.date for page in pages), default=0.0) or time.time()
    if memo is not None and memo.digests == digests:
        # Its versions and objects are shared, never changed by a sync.
        return dataclasses.replace(memo.model, server_time=now)
    contents = [item for page in pages for item in page.objects]
    model = _model(contents, prefix, now, ignored)
    model.digest = digest
    with _memos_lock:
        _memos[key] = _Memo(digests, dict(zip(digests, pages)), model)
        _memos.move_to_end(key)
        while len(_memos) > _MEMOS:
            _memos.popitem(last=False)
    return model


def _date(date: str | None) -> float:
    try:
        return parsedate_to_datetime(date).timestamp() if date else 0.0
    except (TypeError, ValueError):
        return 0.0


async def list_model(transport: Transport, prefix: str, executor: Executor, attempts: int = 5,
                     known: str = "", last_shape: list[int] | None = None) -> RemoteModel:
    """List the versions of the model stored under `prefix` (which ends in '/'); when the
    listing's digest is `known`, nothing is parsed (`unchanged`). `last_shape` (objects
    per version at the last sync) picks how to list; see the module docstring."""
    split = split_saves_round_trips(last_shape or [])
    return await asyncio.get_running_loop().run_in_executor(executor, _list, transport, prefix, attempts, known, split)


def _model(contents: list[tuple[str, int, str, float]], prefix: str, now: float,
           ignored: dict[str, str]) -> RemoteModel:
    """The versions in a listing's objects (keys, sizes, ETags, modification times);
    `ignored` holds directories already found not to be versions."""
    model = RemoteModel(objects_listed=len(contents), server_time=now, ignored=dict(ignored))
    by_version: dict[str, list[tuple[str, int, str, float]]] = {}
    for item in contents:
        key = item[0]
        if not key.startswith(prefix):
            continue  # not under the model: a store answering what was not asked
        name, slash, _rest = key[len(prefix):].partition("/")
        if not slash:
            continue  # a loose object next to the versions
        if VERSION_RE.match(name):
            by_version.setdefault(f"{prefix}{name}/", []).append(item)
        else:
            model.ignored.setdefault(f"{prefix}{name}/", "not a numeric version directory")
    for vprefix, items in by_version.items():
        version = int(vprefix[len(prefix):].rstrip("/"))
        if version in model.versions or version in model.uploading:
            model.ignored[vprefix] = f"another directory also names version {version}"
            continue
        objects: dict[str, RemoteObject] = {}
        for key, size, etag, modified in items:
            if key.endswith("/"):
                continue  # a directory marker some upload tools create
            if key == vprefix + PUSH_MARKER:
                model.uploading[version] = modified
                continue
            rel = safe_relpath(key[len(vprefix):]) if key.startswith(vprefix) else None
            if rel is None:
                model.ignored[key] = "unsafe file name"
                continue
            objects[rel] = RemoteObject(key, rel, size, parse_etag(etag), modified)
        conflicts = _conflicts(list(objects))
        if version in model.uploading:
            pass  # still uploading: neither a version nor a problem yet
        elif conflicts:
            model.ignored[vprefix] = f"paths that are both a file and a directory: {', '.join(conflicts[:3])}"
        elif objects:
            model.versions[version] = objects
        else:
            model.ignored[vprefix] = "empty version directory"
    if model.ignored:
        log.warning("model_store.ignored_keys", prefix=prefix, count=len(model.ignored),
                    sample=dict(list(model.ignored.items())[:5]))
    return model
