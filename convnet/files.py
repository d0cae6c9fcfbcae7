"""Writing files so that a crash or a kill never leaves half of one.

Every module that writes a file a user keeps (models, checkpoints, histories, datasets,
caches) writes it through :func:`atomic_write`: the old file stays whole until the new
one is complete on disk.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def _alive(pid: str) -> bool:
    """Whether the process ``pid`` (of this host) is still running."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def atomic_write(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via a temporary file in the same folder, fsync, then ``os.replace``.

    The temporary file is named after its writer (host and process), so that the leftovers
    of writers that were killed are removed, and never the file of one still writing the
    same path (two workers building the same cache, say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.{HOST}-*.tmp"):
        if not _alive(stale.name[len(f".{path.name}.{HOST}-") :].split(".")[0]):
            stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{HOST}-{os.getpid()}.", suffix=".tmp"
    )
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a saved model is an ordinary file
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # ENOSPC on write names no file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_json(path: Path, value: Any) -> None:
    write_bytes(path, json.dumps(value, indent=2).encode())
