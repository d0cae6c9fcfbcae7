"""convnet's hand-written CPU kernels, compiled on first use.

``book_sigmoid.cc`` runs the book's network.py / network2.py nets (an epoch, a forward
pass), called through ctypes by :mod:`convnet.book.sigmoid_kernel`; :func:`book_library`
builds it. ``dense.cc`` is a dense layer's backward pass fused with an SGD step
(:mod:`convnet.dense`), called by XLA and built with ``conv_pool.cc``, which the rest of
this text is about.

Under JAX on a CPU a conv layer is ``conv_pool.cc`` instead of XLA's im2col, GEMM and
pooling passes: its evaluation output is one call (convolution + max-pooling, the image
read in place); its training output is one call that also marks where each window's
maxima are, and its gradients are one call each, read off those maxima (the other
places of a window get no gradient). Why: net C's 10,000-image evaluation pass took
0.26 s against XLA's 0.70 s on two cores (benchmarks/RESULTS.md, "The evaluation pass:
convnet's own kernel"); the training step: "The fused conv-pool training kernel", "The
conv kernel's gradients" and "The fourth round: the kernels' inner loops".

The source is compiled with the system C++ compiler (``$CXX``, else ``c++``, ``g++`` or
``clang++``) for this CPU (``-march=native``), against the XLA FFI headers that jaxlib
ships, into ``$CONVNET_CACHE/kernels`` (default ``~/.cache/convnet``). The file name hashes
the source, compiler, flags, jaxlib and CPU, so a cache shared between machines never
loads a kernel built for another CPU. The compiler runs in a background thread while
PyTensor builds the graphs. The kernel is a speed-up, never a requirement: without a
compiler, or if the build fails, :func:`conv_pool_target` returns None, :func:`why_not`
says why, and the layers keep XLA's own formulation. ``CONVNET_KERNEL=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from convnet import config

SOURCE = Path(__file__).with_name("conv_pool.cc")
TARGET = "convnet_conv_pool"  # the name XLA knows the kernel by
# The kernel's entry points, registered as TARGET + suffix: the evaluation pass, and the
# training pass with its two gradients (see conv_pool.cc).
ENTRY_POINTS = {
    "": "ConvnetConvPool",
    "_train": "ConvnetConvPoolTrain",
    "_grad_w": "ConvnetConvPoolGradW",
    "_grad_x": "ConvnetConvPoolGradX",
}
DENSE_SOURCE = Path(__file__).with_name("dense.cc")
DENSE_TARGET = "convnet_dense"
# A dense layer's product, and its inputs' gradient with an SGD step in one pass (see
# dense.cc).
DENSE_ENTRY_POINTS = {"_sgd": "ConvnetDenseSgd", "_forward": "ConvnetDenseForward"}
HEADER = Path(__file__).with_name("xla_call.h")  # shared by the kernels XLA calls
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w")
BUILD_SECONDS = 300

_lock = threading.Lock()
_build: threading.Thread | None = None
_result: dict[str, str | None] = {}  # "target" (TARGET or None) and "why" once built
_registered: list[int] = []  # the kernel's lanes, once XLA knows it (for the whole process)


def enabled() -> bool:
    """Whether the kernel may be used here: JAX installed, a compiler found, not turned off.

    Raises ArgumentError for a ``CONVNET_KERNEL`` other than 0 or 1."""
    return _precondition() is None


def _precondition(xla: bool = True) -> str | None:
    """Why the kernel can't even be tried, or None (``xla``: called from XLA, which needs
    JAX's FFI)."""
    if config.setting("CONVNET_KERNEL") == "0":
        return "turned off by CONVNET_KERNEL=0"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"written for x86-64 CPUs; this one is {platform.machine()}"
    if _compiler() is None:
        chosen = os.environ.get("CXX", "").strip()
        if chosen:
            return f"environment variable CXX={chosen!r} names no compiler found on PATH"
        return "no C++ compiler found (set CXX, or install g++ or clang++)"
    if not xla:
        return None
    try:
        import jax.ffi  # noqa: F401 - the headers and the registry live there
    except ImportError:
        return "JAX (with jax.ffi) is not installed"
    return None


def _compiler() -> str | None:
    chosen = os.environ.get("CXX", "").strip()
    if chosen:
        return shutil.which(chosen) or (chosen if os.path.isfile(chosen) else None)
    return next((path for name in ("c++", "g++", "clang++") if (path := shutil.which(name))), None)


def start_build() -> None:
    """Start compiling (or finding in the cache) the kernel in the background; idempotent."""
    global _build
    with _lock:
        if _build is None and not _result:
            _build = threading.Thread(target=_build_and_register, name="convnet-kernel")
            _build.start()


def conv_pool_target() -> str | None:
    """The kernel's XLA target name, once built and registered; None if it can't be.
    The training pass and its gradients are this name + each suffix of ENTRY_POINTS."""
    start_build()
    if _build is not None:
        _build.join()
    return _result.get("target")


def lanes() -> int:
    """How many filters the registered kernel's vectors hold: the weights it is given are
    padded to a multiple of it (16 with AVX-512, else 8)."""
    conv_pool_target()
    return _registered[0] if _registered else 8


def why_not() -> str | None:
    """Why :func:`conv_pool_target` returned None (None if it did not)."""
    conv_pool_target()
    return _result.get("why")


def _build_and_register() -> None:
    try:
        why = _precondition()
        if why is None:
            import jax

            library = _load(_library())
            dense = _load(_library(DENSE_SOURCE), lambda: _library(DENSE_SOURCE))
            if not _registered:  # XLA takes one handler per name and process
                for target, entries, lib in (
                    (TARGET, ENTRY_POINTS, library),
                    (DENSE_TARGET, DENSE_ENTRY_POINTS, dense),
                ):
                    for suffix, symbol in entries.items():
                        function = jax.ffi.pycapsule(getattr(lib, symbol))
                        jax.ffi.register_ffi_target(target + suffix, function, platform="cpu")
                library.ConvnetLanes.restype = ctypes.c_int64
                _registered.append(int(library.ConvnetLanes()))
    except Exception as exc:  # a speed-up must never break a run: report, fall back
        why = f"the kernel could not be built or loaded: {exc}"
    _result.update(target=None if why else TARGET, why=why)


def dense_target() -> str | None:
    """The dense kernel's XLA target name (+ ``_sgd``), built with the conv-pool kernel;
    None where that could not be built (:func:`why_not`)."""
    return DENSE_TARGET if conv_pool_target() is not None else None


def _load(library: Path, build: Callable[[], Path] | None = None) -> ctypes.CDLL:
    """Load the kernel; a cached file that won't load (damaged on disk) is built again."""
    try:
        return ctypes.cdll.LoadLibrary(str(library))
    except OSError:
        library.unlink(missing_ok=True)
        return ctypes.cdll.LoadLibrary(str((build or _library)()))


BOOK_SOURCE = Path(__file__).with_name("book_sigmoid.cc")
# No fused multiply-adds: the book's networks round as NumPy does (see book_sigmoid.cc).
BOOK_FLAGS = (*FLAGS, "-ffp-contract=off")
# glibc's vector exp where the system has it: the sigmoids, 8 at a time.
BOOK_MVEC = ("-DCONVNET_MVEC", "-lmvec") if ctypes.util.find_library("mvec") else ()
_book: dict[str, ctypes.CDLL | str | None] = {}


def book_library() -> ctypes.CDLL | None:
    """The book's sigmoid-network kernel (``book_sigmoid.cc``), built on first use; None
    where it can't be (:func:`book_why_not` says why): the caller keeps its XLA path."""
    with _lock:
        if not _book:
            why = _precondition(xla=False)
            library = None
            if why is None:
                try:

                    def build() -> Path:
                        return _library(BOOK_SOURCE, (*BOOK_FLAGS, *BOOK_MVEC), xla=False)

                    library = _load(build(), build)
                    library.ConvnetBookLanes.restype = ctypes.c_int64
                except Exception as exc:  # a speed-up must never break a run
                    why = f"the book's kernel could not be built or loaded: {exc}"
            _book.update(library=library, why=why)
    found = _book["library"]
    return found if isinstance(found, ctypes.CDLL) else None


def book_why_not() -> str | None:
    """Why :func:`book_library` returned None (None if it did not)."""
    book_library()
    why = _book.get("why")
    return why if isinstance(why, str) else None


def _library(source: Path = SOURCE, flags: tuple[str, ...] = FLAGS, *, xla: bool = True) -> Path:
    """The compiled kernel for this source, compiler and CPU, built if not yet cached
    (``xla``: against the XLA FFI headers jaxlib ships)."""
    compiler = _compiler()
    assert compiler is not None  # checked by _precondition
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    key = hashlib.sha256()
    for part in (source.read_bytes(), version.encode(), " ".join(flags).encode()):
        key.update(part)
    if xla:
        import jaxlib

        key.update(jaxlib.__version__.encode())
        key.update(HEADER.read_bytes())
    key.update(_cpu_identity().encode())
    folder = config.cache_root() / "kernels"
    library = folder / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed: a process that finds the file finds it whole.
    handle, partial = tempfile.mkstemp(suffix=".so", dir=folder)
    os.close(handle)
    try:
        headers = []
        if xla:
            import jax.ffi

            headers = ["-I", jax.ffi.include_dir(), "-I", str(HEADER.parent)]
        command = [compiler, *flags, *headers, str(source), "-o", partial]
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(partial, library)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return library


def _cpu_identity() -> str:
    """The CPU model and its instruction-set flags (what ``-march=native`` depends on)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(lines))
