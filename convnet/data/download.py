"""Downloading MNIST: mirrors in order, resumable, retried, verified, placed atomically.

Each file is fetched into ``.NAME.part`` beside its destination; an interrupted
transfer (a cut connection, a killed process) resumes from where it stopped with an
HTTP Range request. A finished file must match the canonical archive's sha256 or, since
some mirrors recompress, the canonical sha256 of its uncompressed content; only then is
it moved into place with ``os.replace``. Mirrors come from ``CONVNET_MNIST_MIRRORS``
(comma-separated base URLs) or the defaults below.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from http.client import HTTPException
from pathlib import Path

from convnet import config
from convnet.errors import ConvnetError

CANONICAL = {  # name: (sha256 of the canonical .gz, sha256 of the uncompressed file)
    "train-images-idx3-ubyte": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte": (
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte": (
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}
DEFAULT_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
CHUNK = 1 << 16


class DownloadError(ConvnetError, OSError):
    """A file could not be fetched and verified from any mirror."""


class _MirrorRefusedError(Exception):
    """This mirror cannot deliver this file (don't retry it)."""


def mirrors_from_environment() -> list[str]:
    value = config.setting("CONVNET_MNIST_MIRRORS")
    return [m.strip() for m in value.split(",") if m.strip()] if value else list(DEFAULT_MIRRORS)


def verified(path: Path, name: str) -> bool:
    """True when ``path`` is the canonical archive, or any gzip of the canonical content."""
    gz_sha, raw_sha = CANONICAL[name]
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    if digest.hexdigest() == gz_sha:
        return True
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                digest.update(block)
    except (OSError, EOFError, zlib.error):
        return False
    return digest.hexdigest() == raw_sha


def _bar(total: int | None, initial: int, label: str, show: bool):
    if not show:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc=label, leave=False)


def _fetch(url: str, part: Path, *, timeout: float, show: bool) -> None:
    """One attempt: append to ``part`` from where it stops, until the server's end."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is complete
            return
        if exc.code in (401, 403, 404, 410):
            raise _MirrorRefusedError(f"HTTP {exc.code} {exc.reason}") from None
        raise
    with response:
        resumed = have and response.status == 206
        length = response.headers.get("Content-Length")
        total = int(length) + (have if resumed else 0) if length else None
        bar = _bar(total, have if resumed else 0, part.name.strip(".").removesuffix(".part"), show)
        with part.open("ab" if resumed else "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                if bar is not None:
                    bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if bar is not None:
            bar.close()
    if total is not None and part.stat().st_size < total:
        raise HTTPException(f"connection closed at {part.stat().st_size} of {total} bytes")


def fetch_file(
    name: str,
    dest: Path,
    mirrors: Sequence[str],
    *,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    show: bool = False,
) -> Path:
    """Fetch ``name``.gz into ``dest`` from the first mirror that delivers a verified copy."""
    target = dest / f"{name}.gz"
    if target.exists() and verified(target, name):
        return target
    part = dest / f".{name}.gz.part"
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + f"/{name}.gz"
        error = "no attempt made"
        for attempt in range(retries):
            try:
                _fetch(url, part, timeout=timeout, show=show)
            except _MirrorRefusedError as exc:
                error = str(exc)
                break
            except (urllib.error.URLError, HTTPException, OSError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                time.sleep(backoff * 2**attempt)
                continue
            if verified(part, name):
                os.replace(part, target)
                return target
            error = "checksum mismatch (corrupt or not MNIST)"
            part.unlink(missing_ok=True)
            break
        else:
            error = f"gave up after {retries} attempts; last: {error}"
        part.unlink(missing_ok=True)  # a partial file from this mirror must not mix with the next
        failures.append(f"{url}: {error}")
    raise DownloadError(
        f"{name}.gz: no mirror delivered a verified copy:\n  "
        + "\n  ".join(failures)
        + "\nSet CONVNET_MNIST_MIRRORS to other mirrors, or copy the files into "
        + str(dest)
    )


def download_mnist(
    dest: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool | None = None,
) -> Path:
    """Fetch the four MNIST files into ``dest`` (default ``~/.cache/convnet/mnist``)."""
    folder = Path(dest) if dest is not None else config.cache_root() / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty() if progress is None else progress
    for name in CANONICAL:
        fetch_file(
            name,
            folder,
            list(mirrors or mirrors_from_environment()),
            retries=retries,
            timeout=timeout,
            backoff=backoff,
            show=show,
        )
    return folder
