"""Download model archives (RMIRs) from http(s) URLs pinned by sha256, resuming interrupted runs.

A remote model is written `https://host/path/name.rmir#sha256=<64 hex digits>`. `download`
streams it into `<dest>.part`, resumes with an HTTP Range request after a dropped connection
or a stalled server, verifies the sha256 and only then renames the file into place.
"""

from __future__ import annotations

import base64
import hashlib
import http
import http.client
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edged import __version__
from edged.errors import FetchError

_LOGGER = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_MAX_BACKOFF_S = 30.0
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
# 4xx answers that mean "try again later" rather than "this URL is wrong".
_RETRYABLE_4XX = frozenset({408, 429})

ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class RemoteSource:
    """An http(s) URL with the sha256 its content must have."""

    url: str
    sha256: str

    def __post_init__(self) -> None:
        """Validate the URL and normalise the hash to lowercase hex."""
        object.__setattr__(self, "sha256", self.sha256.strip().lower())
        if any(c.isspace() or not c.isprintable() for c in self.url):
            raise FetchError(
                f"Model URL {_redact(self.url)!r} contains spaces or control characters; "
                "percent-encode them (a space is %20) in config.sh."
            )
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(
                f"Model URL {_redact(self.url)} is not an http:// or https:// URL; "
                "fix it in config.sh."
            )
        if parts.fragment:
            raise FetchError(
                f"Model URL {_redact(self.url)} still has a '#' fragment; "
                "pass the sha256 separately (use parse_remote for 'URL#sha256=HEX')."
            )
        if not _SHA256_RE.fullmatch(self.sha256):
            raise FetchError(
                f"The sha256 given for {_redact(self.url)} is not 64 hexadecimal digits; "
                "copy the full hash into config.sh."
            )
        if not self.filename.endswith(".rmir"):
            raise FetchError(
                f"Model URL {_redact(self.url)} does not name a .rmir file; "
                "point it at the RMIR archive in config.sh."
            )

    @property
    def filename(self) -> str:
        """The last path component of the URL, URL-unquoted (e.g. 'asr_en.rmir')."""
        path = urllib.parse.urlsplit(self.url).path
        return urllib.parse.unquote(path.rsplit("/", 1)[-1])


def parse_remote(spec: str) -> RemoteSource:
    """Parse 'http(s)://host/path/name.rmir#sha256=HEX' into a RemoteSource (FetchError if malformed)."""
    spec = spec.strip()
    url, sep, fragment = spec.partition("#")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise FetchError(
            f"Model URL {_redact(url)} uses scheme '{scheme or '(none)'}', but only http:// and "
            "https:// are supported; fix it in config.sh."
        )
    fields = dict(p.partition("=")[::2] for p in fragment.split("&") if p) if sep else {}
    if "sha256" not in fields:
        raise FetchError(
            f"Model URL {_redact(url)} has no '#sha256=<64 hex digits>' fragment; append the "
            "archive's sha256 in config.sh so the download can be verified."
        )
    digest = fields["sha256"].strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise FetchError(
            f"The '#sha256=' fragment of {_redact(url)} is not 64 hexadecimal digits; "
            "copy the full hash into config.sh."
        )
    return RemoteSource(url=url, sha256=digest)


def download(
    source: RemoteSource,
    dest: Path,
    *,
    timeout_s: float = 30,
    retries: int = 4,
    backoff_s: float = 1.0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Download `source` to `dest`, resuming `dest.part` and retrying; return `dest` once verified."""
    dest = Path(dest)
    try:
        return _download(source, dest, timeout_s, retries, backoff_s, progress)
    except OSError as exc:  # Network errors never get here: _attempt turns them into _Transient.
        raise FetchError(
            f"Could not download to {exc.filename or dest}: {exc.strerror or exc}; "
            "check free disk space and the directory's permissions."
        ) from exc


def _download(
    source: RemoteSource,
    dest: Path,
    timeout_s: float,
    retries: int,
    backoff_s: float,
    progress: ProgressCallback | None,
) -> Path:
    """The body of `download`; local file errors escape as OSError."""
    if dest.is_file() and _sha256_file(dest) == source.sha256:
        _LOGGER.debug("%s already present and verified; not downloading", dest)
        return dest
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    url = _redact(source.url)
    attempt = 0
    restarted = False
    while True:
        try:
            digest = _attempt(source, part, timeout_s, progress)
        except _Transient as exc:
            if attempt >= retries:
                kept = part.stat().st_size if part.exists() else 0
                tries = "1 attempt" if attempt == 0 else f"{attempt + 1} attempts"
                resume = f", it resumes from the {kept} bytes kept in {part}" if kept else ""
                raise FetchError(
                    f"Could not download {url} after {tries}: {exc}; check the network and "
                    f"run the command again{resume}."
                ) from exc
            delay = min(backoff_s * 2**attempt, _MAX_BACKOFF_S)
            attempt += 1
            _LOGGER.warning(
                "Download of %s failed, %s; retry %s of %s in %.2f s", url, exc, attempt, retries, delay
            )
            time.sleep(delay)
            continue
        unsatisfiable = digest is None
        if digest is None:  # 416: the .part may already hold the whole file.
            digest = _sha256_file(part)
        if digest == source.sha256:
            break
        part.unlink(missing_ok=True)
        if unsatisfiable and not restarted:
            restarted = True
            _LOGGER.warning("Partial download %s did not verify; downloading %s again", part, url)
            continue
        raise FetchError(
            f"{source.filename} downloaded from {url} has sha256 {digest}, expected "
            f"{source.sha256}; the file on the server differs from the one named in config.sh."
        )
    os.replace(part, dest)
    _fsync_dir(dest.parent)
    _LOGGER.info("Downloaded and verified %s", dest)
    return dest


class _Transient(Exception):
    """A failure worth retrying (dropped connection, stall, 5xx); str() describes it."""


def _attempt(
    source: RemoteSource, part: Path, timeout_s: float, progress: ProgressCallback | None
) -> str | None:
    """Make one request, appending to or rewriting `part`; return its sha256, or None on HTTP 416."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"edged/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    parts = urllib.parse.urlsplit(source.url)
    request = urllib.request.Request(_redact(source.url), headers=headers)
    if parts.username is not None:  # user:password@host -> Basic auth, not forwarded on redirects.
        userinfo = urllib.parse.unquote(f"{parts.username}:{parts.password or ''}")
        token = base64.b64encode(userinfo.encode()).decode("ascii")
        request.add_unredirected_header("Authorization", f"Basic {token}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)  # RemoteSource admits http(s) URLs only
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            if progress is not None:
                progress(offset, offset)
            return None
        status = f"HTTP {exc.code} {exc.reason or _phrase(exc.code)}".rstrip()
        if exc.code >= 500 or exc.code in _RETRYABLE_4XX:
            raise _Transient(status) from exc
        what = "the URL (and any user:password in it)" if exc.code in (401, 403) else "the URL"
        raise FetchError(
            f"Could not download {_redact(source.url)}: {status}; check {what} in config.sh."
        ) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (http.client.InvalidURL, ValueError)):
            raise _invalid_url(source, exc.reason) from exc
        if isinstance(exc.reason, ssl.SSLCertVerificationError):
            raise FetchError(
                f"Could not download {_redact(source.url)}: the server's TLS certificate could not be "
                "verified; check the URL in config.sh or the system's CA certificates."
            ) from exc
        raise _Transient(_describe(exc.reason, timeout_s)) from exc
    except (http.client.InvalidURL, ValueError) as exc:
        raise _invalid_url(source, exc) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(_describe(exc, timeout_s)) from exc

    with response:
        hasher = hashlib.sha256()
        length = _int_or_none(response.headers.get("Content-Length"))
        total: int | None
        if response.status == 206 and offset:
            match = _CONTENT_RANGE_RE.fullmatch((response.headers.get("Content-Range") or "").strip())
            if match is None or int(match.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Transient("the server answered the resume request with the wrong range")
            total = None if match.group(3) == "*" else int(match.group(3))
            mode = "ab"
            _hash_file_into(part, hasher)
        else:
            if offset:
                _LOGGER.info("Server ignored the resume request; downloading %s from the start", source.url)
            offset = 0
            total = length
            mode = "wb"
        if total is None and length is not None:
            total = offset + length
        done = offset
        with open(part, mode) as fh:
            if progress is not None:
                progress(done, total)
            while True:
                try:
                    chunk = _read_some(response)
                except (OSError, http.client.HTTPException) as exc:
                    raise _Transient(_describe(exc, timeout_s)) from exc
                if not chunk:
                    break
                fh.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
            fh.flush()
            os.fsync(fh.fileno())
    if length is not None and done - offset < length:
        raise _Transient(f"the connection dropped after {done} of {offset + length} bytes")
    return hasher.hexdigest()


def _invalid_url(source: RemoteSource, exc: BaseException) -> FetchError:
    """The error for a URL that http.client refuses to send."""
    return FetchError(
        f"Model URL {_redact(source.url)} is not a valid URL ({exc}); "
        "percent-encode special characters (a space is %20) in config.sh."
    )


def _read_some(response: http.client.HTTPResponse) -> bytes:
    """Return the next bytes of the body (up to one chunk), b'' at its end."""
    read1 = getattr(response, "read1", None)
    return read1(_CHUNK) if read1 is not None else response.read(_CHUNK)


def _describe(exc: BaseException | str, timeout_s: float) -> str:
    """Turn a network exception into a short phrase for log and error messages."""
    if isinstance(exc, TimeoutError):
        return f"the server stalled or timed out, no data for {timeout_s:g} s"
    if isinstance(exc, ConnectionRefusedError):
        return "the server refused the connection"
    if isinstance(exc, http.client.IncompleteRead):
        return "the connection dropped before the end of the file"
    if isinstance(exc, (ConnectionError, http.client.RemoteDisconnected)):
        return f"the connection dropped: {exc}"
    return f"the connection failed: {exc}"


def _sha256_file(path: Path) -> str:
    """Return the lowercase hex sha256 of a file's content."""
    hasher = hashlib.sha256()
    _hash_file_into(path, hasher)
    return hasher.hexdigest()


def _hash_file_into(path: Path, hasher: hashlib._Hash) -> None:
    """Feed a file's content into `hasher` in chunks."""
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            hasher.update(block)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _int_or_none(value: str | None) -> int | None:
    """Parse a header value as a non-negative int, or None."""
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def _phrase(code: int) -> str:
    """The standard reason phrase for an HTTP status code ('' if unknown)."""
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


def _redact(url: str) -> str:
    """Drop any user:password@ from a URL before it goes into a message."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
