"""Fetch one archive over HTTP(S): resumable, size- and checksum-checked, never half-written.

A download goes to ``NAME.part``; an interrupted one is resumed with an HTTP range request where the server
allows it (a server answering 200 to a range request is restarted from zero). Only a complete archive whose
size matches the server's and whose SHA-256 matches a published one (where there is one) is renamed to
``NAME``, so a file without ``.part`` is always a whole, verified archive. Errors are one line
(:class:`FetchError`, a :class:`UserError`): no network, a source that moved, a web page served instead of
an archive, a checksum mismatch (the bad file is removed).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ..errors import UserError

TIMEOUT_S = 30  # per socket operation: a stalled server is an error, not a hang (SAGE_DOWNLOAD_TIMEOUT to change)
CHUNK = 1 << 20
USER_AGENT = "sage-datasets/1"


class FetchError(UserError):
    pass


@dataclass(frozen=True)
class Archive:
    url: str
    name: str  # file name in the download folder, and on a mirror
    size: int | None = None  # bytes, where the source's listing gives it (disk planning without Content-Length)
    sha256: str | None = None  # where the source publishes one


def mirror() -> str | None:
    """``SAGE_DOWNLOAD_MIRROR``: a server that serves every file sage fetches by its file name."""
    value = os.environ.get("SAGE_DOWNLOAD_MIRROR", "").strip()
    return value.rstrip("/") if value else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def timeout_s() -> float:
    """Seconds one socket operation of a download may wait (a connection, a read)."""
    try:
        return float(os.environ.get("SAGE_DOWNLOAD_TIMEOUT", TIMEOUT_S))
    except ValueError:
        raise UserError(f"SAGE_DOWNLOAD_TIMEOUT={os.environ['SAGE_DOWNLOAD_TIMEOUT']!r} is not a number of "
                        "seconds") from None


@contextmanager
def socket_timeout():
    """Every socket opened inside waits at most ``timeout_s()`` per operation: for libraries that download with
    urllib and no timeout of their own (torch.hub, open_clip), so a stalled server is an error, not a hang."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s())
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _request(url: str, method: str = "GET", headers: dict | None = None):
    return urllib.request.urlopen(urllib.request.Request(url, method=method, headers={"User-Agent": USER_AGENT,
                                                                                       **(headers or {})}),
                                  timeout=timeout_s())


def _unreachable(url: str, what: str, exc: Exception) -> FetchError:
    reason = getattr(exc, "reason", exc)
    return FetchError(f"cannot reach {urlsplit(url).netloc} for {what} ({reason}); check the network, or set "
                      "SAGE_DOWNLOAD_MIRROR to a mirror that serves the archives")


def _moved(url: str, what: str, code: int) -> FetchError:
    return FetchError(f"the source of {what} answered HTTP {code} for {url}: it may have moved; "
                      "set SAGE_DOWNLOAD_MIRROR to a mirror that serves the archives")


def remote_size(url: str, what: str) -> int | None:
    """The archive's size from a HEAD request (None where the server does not say)."""
    try:
        with _request(url, "HEAD") as response:
            length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 410):
            raise _moved(url, what, exc.code) from None
        return None  # some servers refuse HEAD (403/405): the GET will tell
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        raise _unreachable(url, what, exc) from None


def read_text(url: str) -> str | None:
    """A small text file (a mirror's SHA256SUMS), or None where there is none."""
    try:
        with _request(url) as response:
            return response.read(1 << 20).decode("utf-8", "replace")
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        raise _unreachable(url, "the mirror's checksums", exc) from None


def fetch(archive: Archive, url: str, folder: Path, what: str, sha256: str | None = None,
          on_start: Callable[[int | None, int], None] | None = None,
          on_bytes: Callable[[int], None] | None = None, notice: Callable[[str], None] = print) -> Path:
    """``folder/archive.name``, downloaded from ``url`` unless already there (complete and verified)."""
    final, part = folder / archive.name, folder / (archive.name + ".part")
    if final.is_file():
        return final
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = _request(url, headers=headers)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # our part is not a prefix the server knows: start over
            part.unlink(missing_ok=True)
            return fetch(archive, url, folder, what, sha256, on_start, on_bytes, notice)
        raise _moved(url, what, exc.code) from None
    except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
        raise _unreachable(url, what, exc) from None
    with response:
        if "text/html" in (response.headers.get("Content-Type") or ""):
            raise FetchError(f"{url} served a web page instead of the {what} archive: the source has moved or "
                             "asks for a login; set SAGE_DOWNLOAD_MIRROR to a mirror that serves the archives")
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            total = int(response.headers.get("Content-Range", "/").rsplit("/", 1)[-1] or 0) or None
            mode = "ab"
        else:
            if offset:
                notice(f"{archive.name}: the server does not resume downloads; starting it again from zero")
            offset, total, mode = 0, length, "wb"
        if on_start:
            on_start(total, offset)
        written = offset
        with open(part, mode) as out:
            while True:
                try:
                    block = response.read(CHUNK)
                except (http.client.HTTPException, OSError) as exc:  # cut off, reset, timed out
                    raise FetchError(f"download of {archive.name} for {what} stopped at {written:,} of "
                                     f"{total or '?'} bytes ({type(exc).__name__}); run the same command "
                                     "again to resume") from None
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as exc:
                    raise FetchError(f"cannot write {part}: {exc.strerror or exc}") from None
                written += len(block)
                if on_bytes:
                    on_bytes(len(block))
    if total is not None and written != total:
        raise FetchError(f"download of {archive.name} for {what} stopped at {written:,} of {total:,} bytes; "
                         "run the same command again to resume")
    expected = sha256 or archive.sha256
    if expected:
        got = sha256_of(part)
        if got != expected.lower():
            part.unlink()
            raise FetchError(f"{archive.name} for {what}: SHA-256 {got[:16]}… does not match the published "
                             f"{expected[:16]}…; the file was removed (a corrupt copy, or the source changed)")
    part.replace(final)
    return final
