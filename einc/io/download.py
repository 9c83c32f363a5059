"""Downloading one file over HTTP(S): resumable, verified, atomic.

``download(urls, target, size, sha256)`` tries each mirror in turn. Bytes go to ``TARGET.part``
beside the target; an interrupted transfer (a dropped connection, a timeout, Ctrl-C) leaves the
``.part`` file, and the next attempt asks only for the rest (an HTTP ``Range`` request; a server
that ignores it sends everything again and the file starts over). A complete ``.part`` file is
checked against the published size and SHA-256; only then is it fsynced and renamed to the
target, so a partial or corrupt download never appears under the target's name. A mismatch
deletes the ``.part`` file (resuming from wrong bytes can never give right ones).

Progress is a tqdm bar on stderr when stderr is a terminal, nothing when it is piped.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from einc.ir.diagnostics import EincError

CHUNK = 1 << 16
TIMEOUT_SECONDS = 30
# attempts per mirror while each one makes progress (a flaky connection resumes where it broke)
RESUMES_PER_MIRROR = 3
USER_AGENT = "einc-data-fetch (+https://github.com/; python urllib)"


class DownloadError(EincError):
    """No mirror delivered the file with the published size and checksum."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(urls: Sequence[str], target: Path, size: int, sha256: str, label: str | None = None,
             progress: bool | None = None) -> Path:
    """Fetch ``target`` from the first of ``urls`` that delivers ``size`` bytes hashing to
    ``sha256``; return ``target``. Raises ``DownloadError`` naming every mirror's failure."""
    target = Path(target)
    if target.exists() and target.stat().st_size == size and sha256_of(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    show = sys.stderr.isatty() if progress is None else progress
    failures = []
    for url in urls:
        failure = _from_mirror(url, part, size, label or target.name, show)
        if failure is None:
            actual = sha256_of(part)
            if actual == sha256:
                _publish(part, target)
                return target
            part.unlink()
            failure = f"checksum mismatch: sha256 {actual}, expected {sha256}"
        failures.append(f"{url}: {failure}")
    raise DownloadError(f"could not download {label or target.name}: " + "; ".join(failures))


def _from_mirror(url: str, part: Path, size: int, label: str, show: bool) -> str | None:
    """Bring ``part`` to ``size`` bytes from ``url``; None when it has them, else why not."""
    failure = None
    for _ in range(RESUMES_PER_MIRROR):
        have = part.stat().st_size if part.exists() else 0
        if have > size:  # not a prefix of this file: start over
            part.unlink()
            have = 0
        if have == size:
            return None
        try:
            _transfer(url, part, have, size, label, show)
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # the server has no such range: our bytes are not its file
                part.unlink()
                failure = "HTTP 416 (range not satisfiable); starting over"
                continue
            return f"HTTP {error.code} {error.reason}"
        except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError) as error:
            failure = _reason(error)
            after = part.stat().st_size if part.exists() else 0
            if after <= have:  # no progress: this mirror is not answering
                return failure
            continue  # progress was made: resume from where it broke
        if (part.stat().st_size if part.exists() else 0) == size:
            return None
        failure = f"the transfer ended after {part.stat().st_size:,} of {size:,} bytes"
    return failure


def _transfer(url: str, part: Path, have: int, size: int, label: str, show: bool) -> None:
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        if have and response.status != 206:  # the server ignored the range: it sends everything
            have = 0
        with part.open("r+b" if have else "wb") as stream:
            stream.seek(have)
            stream.truncate()
            _copy(response, stream, have, size, label, show)


def _copy(response: Any, stream: BinaryIO, have: int, size: int, label: str, show: bool) -> None:
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                   leave=False, file=sys.stderr)
    try:
        written = have
        while written < size:
            block = response.read(min(CHUNK, size - written))
            if not block:
                break
            stream.write(block)
            written += len(block)
            if bar is not None:
                bar.update(len(block))
        stream.flush()
        os.fsync(stream.fileno())
    finally:
        if bar is not None:
            bar.close()


def _publish(part: Path, target: Path) -> None:
    with part.open("rb") as stream:
        os.fsync(stream.fileno())
    os.replace(part, target)
    sync_folder(target.parent)


def sync_folder(folder: Path) -> None:
    """fsync a folder so that a rename in it survives a crash (where the system allows it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        reason = error.reason
        text = getattr(reason, "strerror", None) or str(reason)
        return f"cannot connect ({text})"
    if isinstance(error, socket.timeout):
        return f"no answer within {TIMEOUT_SECONDS} s"
    if isinstance(error, http.client.IncompleteRead):
        return "the connection closed early"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__
