"""Everything that knows about PyTensor modes, JAX, devices, BLAS and threads.

A :class:`Backend` is chosen per network (never by an import-time switch) from the
arguments, else from ``CONVNET_BACKEND`` / ``CONVNET_DEVICE``, else ``jax`` when JAX is
installed (the fastest steps here, net C built in seconds, and PyTensor's only way onto a
GPU), else ``c``. Why: docs/design.md, "Backends".

In JAX mode PyTensor re-copies a numpy-backed shared variable to the device on every
call, so :meth:`Backend.place` puts convnet's own data and counters on the device once.
The shared variables a user can reach (``layer.w``, ``net.params``) keep numpy values,
which plain PyTensor in its Numba or C mode can read; convnet's functions compute on
their :class:`DeviceMirror` twins.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pytensor
from pytensor.compile.mode import Mode, get_mode
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.traversal import graph_inputs

from convnet import config
from convnet.errors import ArgumentError, BackendError
from convnet.runtime import graph_cache, kernel, patches, step_loop

BACKENDS = ("c", "numba", "jax")
DEVICES = ("cpu", "gpu")
PRECISIONS = ("float32", "tf32")
MICRO_BATCH = 16  # the largest training micro-batch on a CPU; see Backend.micro_batch


def _choice(
    argument: str, value: str | None, env: str, allowed: tuple[str, ...], default: str
) -> str:
    """The argument if given (checked here), else the environment variable (checked by
    :mod:`convnet.config`), else ``default``."""
    if value is None:
        return config.setting(env) or default
    chosen = value.lower()
    if chosen not in (*allowed, "auto"):
        raise ArgumentError(
            f"{argument}: expected one of {', '.join((*allowed, 'auto'))}. Received: {chosen!r}."
        )
    return chosen


def jax_available() -> bool:
    return _module_exists("jax")


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a missing parent package
        return False


def _cuda_plugin_installed() -> bool:
    names = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins.xla_cuda12")
    return any(_module_exists(name) for name in names)


def _jax_device(kind: str) -> Any:
    """The first JAX device of ``kind``, or a clear error saying what was found instead."""
    if not jax_available():
        raise BackendError(
            f"device={kind!r} with backend 'jax' needs JAX, which is not installed. "
            "Install it with: pip install 'convnet[cuda]' (GPU) or pip install jax (CPU)."
        )
    import jax

    try:
        return jax.devices(kind)[0]
    except RuntimeError as exc:
        found = ", ".join(str(d) for d in jax.devices())
        if kind == "gpu" and not _cuda_plugin_installed():
            why = f"jaxlib {jax.__version__} is a CPU-only build (no CUDA plugin installed)"
        else:
            why = f"JAX sees no {kind.upper()} device ({exc})"
        raise BackendError(
            f"device={kind!r}: {why}. Devices found: {found}. For a GPU install "
            "pip install 'convnet[cuda]' on a machine with an NVIDIA driver; convnet never "
            "falls back to the CPU silently."
        ) from None


@dataclass(frozen=True)
class Backend:
    """A PyTensor compilation mode plus the device its data lives on.

    ``precision`` is how a GPU multiplies float32 matrices (see :meth:`matmul_precision`).
    The measured choices (the convolution's form, the evaluation batch, the mode) are
    resolved at a backend's first use and then fixed: a change of ``CONVNET_CONV`` reaches
    the networks built after it, never a network half-way through compiling.
    """

    name: str
    device: str
    precision: str = "tf32"

    def apply(self) -> Mode:
        """Ready PyTensor and JAX for this backend (process-wide, once: BLAS flags, the JAX
        fixes, convnet's Ops' implementations, the compile caches; :mod:`convnet.runtime.
        patches`) and return its mode. A network calls it when it is built."""
        patches.apply(self.name, self.device)
        return self.mode

    @cached_property
    def mode(self) -> Mode:
        """The PyTensor mode (:meth:`apply` must have run: it registers what the mode's
        graphs need)."""
        if not patches.applied(self.name):
            raise BackendError(
                f"the {self.name} backend's mode was asked for before Backend.apply() "
                "readied PyTensor for it"
            )
        if self.name == "c":
            return Mode(linker="cvm", optimizer="fast_run")
        if self.name == "numba":
            return get_mode("NUMBA")
        mode = get_mode("JAX")
        if config.setting("CONVNET_GRAPH_CACHE") == "0":
            return mode
        rewriter = graph_cache.CachedRewriter(mode.optimizer, graph_cache.folder(), "JAX")
        return mode.clone(optimizer=rewriter)

    @property
    def steps_per_call(self) -> int:
        """Optimizer steps per compiled call (:meth:`repeat`): 100 under JAX, one XLA loop
        around the one-step program (12% less time per step than one call per step on a
        CPU, built as fast, and 3-6x faster on an H200); 1 elsewhere, where a Python loop
        gains nothing. Why: benchmarks/RESULTS.md, "Every run in one XLA loop" and the
        optimisation log's ``steps-per-call``."""
        return 100 if self.name == "jax" else 1

    def micro_batch(self, mini_batch_size: int) -> int:
        """Rows per forward/backward pass inside one SGD step (see Network.train_function):
        under JAX on a CPU a mini-batch larger than 16 is split into the largest part
        <= 16 that divides it (when that is >= 8), so that im2col's buffers stay in cache
        (2x per image at mini-batch 256); the whole batch elsewhere. Why:
        benchmarks/RESULTS.md, the optimisation log's ``micro-batch``."""
        if self.name != "jax" or self.device == "gpu" or mini_batch_size <= MICRO_BATCH:
            return mini_batch_size
        part = max(d for d in range(1, MICRO_BATCH + 1) if mini_batch_size % d == 0)
        return part if part >= 8 else mini_batch_size

    @cached_property
    def eval_batch(self) -> int:
        """Examples per evaluation call: 1,000 on a GPU and with the fused kernel (which
        keeps no buffers beyond one image), else 50 (XLA's im2col buffers must fit the
        cache). Why: benchmarks/RESULTS.md, the optimisation log's ``eval-batch``."""
        if self.device == "gpu" or self.conv_implementation == "fused":
            return 1000
        return 50

    @cached_property
    def conv_implementation(self) -> str:
        """How conv layers build their outputs: "fused" (convnet's kernel, :mod:`convnet.
        runtime.kernel`: convolution and max-pooling in one pass, gradients read off the
        window maxima) under JAX on a CPU where the kernel can be built; else "patches"
        (one Im2Col Op, with JAX, Numba and C implementations). Both measured faster than
        the graph of slices ("im2col") and than XLA's own convolution ("native", cuDNN on
        GPUs): benchmarks/RESULTS.md, "The fused conv-pool training kernel", "The book's
        own functions" and the optimisation log's ``conv-op``. ``CONVNET_CONV``
        (im2col | patches | native | fused) overrides it, for measuring."""
        chosen = config.setting("CONVNET_CONV")
        if chosen:
            return chosen
        if self.name == "jax" and self.device == "cpu" and kernel.enabled():
            return "fused"  # built beside PyTensor's graph building (patches.apply)
        return "patches"

    @cached_property
    def dense_implementation(self) -> str:
        """How large dense layers (:data:`convnet.dense.MIN_WEIGHTS` weights and more)
        multiply: "kernel" (convnet's, :mod:`convnet.dense`; with SGD the step and
        the inputs' gradient in one pass over the weights) under JAX on a CPU where the
        kernel can be built; else "dot" (PyTensor's). ``CONVNET_DENSE`` (kernel | dot)
        overrides it, for measuring. Why: benchmarks/RESULTS.md, "The dense kernel"."""
        chosen = config.setting("CONVNET_DENSE")
        if chosen:
            return chosen
        if self.name == "jax" and self.device == "cpu" and kernel.enabled():
            return "kernel"
        return "dot"

    @property
    def matmul_precision(self) -> str | None:
        """JAX's precision for float32 products in this backend's functions; None: XLA's own.
        On NVIDIA GPUs XLA's default (and convnet's) is TF32, which cost the book's net C
        nothing (99.10% against 99.12% in float32) and ran it 19-27% faster;
        ``precision="float32"`` (``CONVNET_PRECISION``) asks for full float32. CPUs compute
        float32 either way. Why: benchmarks/RESULTS.md, "GPU"."""
        if self.name != "jax" or self.device != "gpu" or self.precision == "tf32":
            return None
        return "highest"

    def wrap(self, function: Any) -> Any:
        """``function`` (a compiled PyTensor function), made to honour :attr:`matmul_precision`."""
        if self.matmul_precision is None:
            return function
        return PreciseFunction(function, self.matmul_precision)

    def repeat(self, step: Any, steps: int) -> Any:
        """A call that runs ``steps`` optimizer steps of ``step`` (a compiled one-step
        function from this backend, of the first mini-batch's index): under JAX one XLA
        loop (:mod:`convnet.runtime.step_loop`), elsewhere ``steps`` calls."""
        one_step = step.function if isinstance(step, PreciseFunction) else step
        return self.wrap(step_loop.repeat(one_step, steps, self.name == "jax"))

    @property
    def jax_device(self) -> Any:
        return _jax_device(self.device) if self.name == "jax" else None

    def describe(self) -> str:
        if self.name == "jax":
            where = f"jax on {self.jax_device}"
            return f"{where} ({self.precision} products)" if self.device == "gpu" else where
        blas = pytensor.config.blas__ldflags or "numpy's BLAS"
        return f"{self.name} on cpu ({blas})"

    def place(self, variable: SharedVariable) -> SharedVariable:
        """Make ``variable``'s current value live where this backend computes (for
        convnet's own variables; see :class:`DeviceMirror` for those users reach)."""
        storage = variable.container.storage
        if self.name == "jax":
            import jax

            storage[0] = jax.device_put(storage[0], self.jax_device)
        elif not isinstance(storage[0], np.ndarray):
            # A value left on a JAX device by an earlier network must come back to numpy.
            storage[0] = np.asarray(storage[0])
        return variable

    def shared(self, value: np.ndarray | np.generic, name: str) -> SharedVariable:
        value = np.asarray(value)
        return self.place(pytensor.shared(value, name=name, borrow=True, shape=value.shape))

    def mirror(self, variables: Sequence[SharedVariable]) -> DeviceMirror:
        """Device copies of host-visible ``variables`` for this backend's functions."""
        return DeviceMirror(self, variables)

    @contextlib.contextmanager
    def threads(self) -> Iterator[None]:
        """Pin BLAS to one thread while training on the CPU.

        The team measured (see the speed issue) unpinned OpenBLAS making the book's small
        GEMMs up to 100x slower on a loaded 2-core machine, and two threads never beating
        one at mini-batch 10.
        """
        if self.device != "cpu" or self.name == "jax":
            yield
            return
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: without it BLAS keeps its own setting
            yield
            return
        with threadpool_limits(limits=1, user_api="blas"):
            yield


class DeviceMirror:
    """Device-resident twins of shared variables whose host values users read and write.

    Under JAX every variable gets a twin of the same type whose value lives on the
    device; convnet compiles its functions on the twins (:meth:`replacements`), so weights
    stay on the device for a whole run, while the variables themselves keep writable
    numpy values that any PyTensor mode can use. :meth:`push` sends the host values a user
    replaced (``set_value``, or the updates of their own function) to the device before
    convnet computes; :meth:`pull` brings the twins back after convnet trained. The C and
    Numba backends compute on numpy anyway: there the mirror is empty and both are no-ops.
    """

    def __init__(self, backend: Backend, variables: Sequence[SharedVariable]) -> None:
        self.backend = backend
        for variable in variables:
            storage = variable.container.storage
            if not isinstance(storage[0], np.ndarray):  # e.g. left on a device by hand
                storage[0] = np.array(storage[0])
        self.hosts = list(variables) if backend.name == "jax" else []
        self.twins = [
            pytensor.shared(host.get_value(), name=host.name, shape=host.type.shape)
            for host in self.hosts
        ]
        self._synced: list[tuple[Any, Any]] = [(None, None)] * len(self.hosts)
        self.push()

    def replacements(self, graphs: Sequence[Any] = ()) -> dict[SharedVariable, SharedVariable]:
        """``givens`` that make ``graphs`` compute on the twins instead of the hosts."""
        pairs = dict(zip(self.hosts, self.twins, strict=True))
        if not pairs or not graphs:
            return pairs
        used = set(graph_inputs(graphs))
        return {host: twin for host, twin in pairs.items() if host in used}

    def twin(self, variable: SharedVariable) -> SharedVariable:
        """The variable convnet's functions update in place of ``variable``."""
        return self.replacements().get(variable, variable)

    def push(self) -> None:
        """Host -> device, for every host value changed since the last push or pull.

        A changed value is a new array (``set_value``) or new contents: PyTensor's Numba
        and C modes apply a user's updates in place."""
        for k, (host, twin) in enumerate(zip(self.hosts, self.twins, strict=True)):
            value = host.container.storage[0]
            synced, contents = self._synced[k]
            if value is synced and np.array_equal(value, contents):
                continue
            twin.container.storage[0] = np.array(value, dtype=twin.type.dtype)
            self.backend.place(twin)
            self._synced[k] = (value, np.array(value))

    def pull(self) -> None:
        """Device -> host: the twins' values, as writable numpy arrays."""
        for k, (host, twin) in enumerate(zip(self.hosts, self.twins, strict=True)):
            value = np.array(twin.container.storage[0])
            host.container.storage[0] = value
            self._synced[k] = (value, value.copy())


class PreciseFunction:
    """A compiled function whose calls run under a JAX matmul precision.

    JAX reads the precision when it traces a function, at its first call (and a call
    under another setting traces anew), so the setting must surround every call; a
    process-wide ``jax.config`` change would reach the user's own JAX code too.
    """

    def __init__(self, function: Any, precision: str) -> None:
        import jax

        self.function = function
        self.precision = precision
        self._context = jax.default_matmul_precision

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._context(self.precision):
            return self.function(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # maker, trust_input, ... of the function
        return getattr(self.function, name)


def to_numpy(value: Any) -> np.ndarray:
    """A host copy of a shared variable's value (numpy or a JAX device array)."""
    return np.asarray(value)


def resolve(
    backend: str | None = None, device: str | None = None, precision: str | None = None
) -> Backend:
    """Pick the backend from the arguments, then the environment, then measurement."""
    if isinstance(backend, Backend):
        return backend
    chosen_precision = _choice("precision", precision, "CONVNET_PRECISION", PRECISIONS, "tf32")
    if chosen_precision == "auto":
        chosen_precision = "tf32"
    device_name = _choice("device", device, "CONVNET_DEVICE", DEVICES, "auto")
    if device_name == "auto":
        device_name = "cpu"
    name = _choice("backend", backend, "CONVNET_BACKEND", BACKENDS, "auto")
    if name == "auto":
        name = "jax" if (device_name == "gpu" or jax_available()) else "c"
    if device_name == "gpu" and name != "jax":
        raise BackendError(
            f"device='gpu' needs backend='jax' (PyTensor reaches GPUs only through JAX). "
            f"Received: backend={name!r}."
        )
    chosen = Backend(name, device_name, chosen_precision)
    if name == "jax":
        chosen.jax_device  # noqa: B018 - fail now, with a clear error, not at first call
    return chosen
