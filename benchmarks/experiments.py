#!/usr/bin/env python
"""The measurements behind RESULTS.md's optimisation log, one subcommand each:

    python benchmarks/experiments.py steps-per-call      # scan: 1 / 50 / 100 / 500 steps per call
    python benchmarks/experiments.py eval-batch          # evaluation pass vs batch size, both convs
    python benchmarks/experiments.py call-overhead       # PyTensor Function vs the raw jitted call
    python benchmarks/experiments.py conv-layouts        # pure JAX: im2col, lax.conv, NHWC, per-row
    python benchmarks/experiments.py fast-compile        # PyTensor fast_run vs fast_compile rewrites
    python benchmarks/experiments.py xla-cache           # build time in new processes, cache on/off
    python benchmarks/experiments.py torch-loop          # a standalone PyTorch loop of net C
    python benchmarks/experiments.py reduction-dtype     # with / without the float32-sum fix
    python benchmarks/experiments.py micro-batch         # mini-batch 256/128/64 split in parts
    python benchmarks/experiments.py compile-breakdown   # where a cold build's seconds go, XLA flags
    python benchmarks/experiments.py conv-op             # im2col as graph slices vs one Op (JAX)
    python benchmarks/experiments.py eval-limit          # what bounds the evaluation pass
    python benchmarks/experiments.py linker-conv         # C / Numba backends: slices vs Im2Col Op
    python benchmarks/experiments.py optimizers          # net A, 1 epoch: SGD, Adam, Nesterov
    python benchmarks/experiments.py train-breakdown     # net C's conv layers: fused vs XLA, by pass
    python benchmarks/experiments.py ensemble-bound      # what 5 nets as one program could gain here
    python benchmarks/experiments.py fc-profile          # the dropout net's FC1000 passes under XLA
    python benchmarks/experiments.py dense-sgd           # the fused dense backward + SGD step vs XLA
    python benchmarks/experiments.py dense-forward       # the dense kernel's product vs XLA's GEMM
    python benchmarks/experiments.py step-profile        # net C's step, op by op (XLA's profiler)
    python benchmarks/experiments.py dropout-step-profile  # the same for the dropout net
    python benchmarks/experiments.py scan-threshold      # short runs: 1 or 100 steps per call?
    python benchmarks/experiments.py fusion-shapes       # a conv layer's bias + ReLU, 4-D vs flat
    python benchmarks/experiments.py dense-stream        # the FC1000 layers against streaming alone

Each prints its own table. They run on synthetic MNIST-shaped data except eval-batch and
eval-limit (real test set: set CONVNET_DATA). Pinned to one core, as in bench.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import all_cores, evaluation_seconds, one_core  # beside this script

one_core()  # before JAX starts its thread pool; the children started here inherit it

import numpy as np  # noqa: E402 - after the pinning above


def _net_c_step(
    mbs: int,
    steps: int = 1,
    n: int = 2000,
    optimizer: str | None = None,
    real: bool = False,
    name: str = "relu",
    lmbda: float = 0.1,
):
    """A compiled training function of net C (or the book's net ``name``, with net C's eta
    and, unless given, lmbda) on synthetic data (``real``: the first ``n`` MNIST training images, from
    CONVNET_DATA), and its call list."""
    import convnet.runtime.backend as backends
    from convnet import Network
    from convnet.book import layers_for
    from convnet.optimizers import SGD

    backend = backends.resolve("jax", "cpu")
    if optimizer is not None:
        from pytensor.compile.mode import Mode

        mode = backend.apply()
        backend = type(
            "Custom", (backends.Backend,), {"mode": Mode(linker=mode.linker, optimizer=optimizer)}
        )("jax", "cpu")
    net = Network(layers_for(name, mbs), mbs, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    xy = (rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32))
    if real:
        from convnet import load_mnist

        (x, y), _, _ = load_mnist()
        xy = (x[:n], y[:n])
    data = net.to_device(xy, "t")
    order = net.backend.shared(np.arange(n), "order")
    eta = net.backend.shared(np.float32(0.03), "eta")
    cost = net.backend.shared(np.float32(0.0), "cost")
    start = time.perf_counter()
    fn = net.backend.repeat(net.train_function(data, order, eta, lmbda, cost, SGD(0.03)), steps)
    calls = [np.array(i, dtype=np.int64) for i in range(0, n // mbs, steps)]
    fn(calls[0])
    np.asarray(cost.get_value())
    return net, fn, calls, time.perf_counter() - start, n // mbs


def _best_per_step(net, fn, calls, total_steps, repeats=3) -> float:
    import jax

    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for index in calls:
            fn(index)
        jax.block_until_ready([t.get_value(borrow=True) for t in net.device_copies.twins])
        best = min(best, (time.perf_counter() - start) / total_steps)
    return best


def _best_micros(run: Any, per: int, repeats: int = 5) -> float:
    """Microseconds per ``per`` of the best of ``repeats`` timed calls of ``run()`` (a
    jitted call, waited for), after one untimed call."""
    import jax

    jax.block_until_ready(run())
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run())
        best = min(best, time.perf_counter() - start)
    return best / per * 1e6


def steps_per_call() -> None:
    print("| net C, mini-batch 10 | µs per SGD step | build + first call |")
    print("|---|---|---|")
    for steps in (1, 50, 100, 500):
        net, fn, calls, built, total = _net_c_step(10, steps, n=5000)
        print(
            f"| {steps} steps per call | {_best_per_step(net, fn, calls, total) * 1e6:.0f} | {built:.1f} s |"
        )


def eval_batch() -> None:
    import convnet.runtime.backend as backends
    from convnet import Network, load_mnist
    from convnet.book import layers_for

    _, _, test = load_mnist()
    print("| evaluation batch | net C's 10,000-image pass, XLA's im2col | convnet's kernel |")
    print("|---|---|---|")
    for size in (1000, 250, 100, 50, 25, 10):
        backends.Backend.eval_batch = property(lambda self, size=size: size)
        best = []
        for native in ("0", "1"):
            os.environ["CONVNET_KERNEL"] = native
            net = Network(layers_for("relu", 10), 10, seed=0, backend="jax")
            best.append(min(evaluation_seconds(net, net.to_device(test, "test"), repeats=3)))
        print(f"| {size} | {best[0]:.2f} s | {best[1]:.2f} s |", flush=True)


def call_overhead() -> None:
    import jax

    from convnet import Network
    from convnet.book import layers_for
    from convnet.optimizers import SGD

    net = Network(layers_for("shallow", 10), 10, seed=0, backend="jax")
    rng = np.random.default_rng(0)
    data = net.to_device(
        (rng.random((5000, 784), dtype=np.float32), rng.integers(0, 10, 5000).astype(np.int32)), "t"
    )
    order, eta, cost = (
        net.backend.shared(v, k)
        for k, v in (("o", np.arange(5000)), ("e", np.float32(0.1)), ("c", np.float32(0.0)))
    )
    fn = net.train_function(data, order, eta, 0.0, cost, SGD(0.1))
    calls = [np.array(i, dtype=np.int64) for i in range(500)]
    fn(calls[0])
    storage = list(fn.vm.inputs)

    def raw(index):
        storage[0][0] = index
        fn.vm.jit_fn(*(s[0] for s in storage))

    for name, call in (("PyTensor Function", fn), ("raw jitted call", raw)):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for index in calls:
                call(index)
            jax.block_until_ready(cost.get_value(borrow=True))
            best = min(best, (time.perf_counter() - start) / len(calls))
        print(f"net A, {name}: {best * 1e6:.0f} µs/step")


def conv_layouts() -> None:
    import jax
    import jax.numpy as jnp
    from jax import lax

    def im2col(x, w, c, f, h, k=5):
        o = h - k + 1
        xt = x.transpose(1, 0, 2, 3)
        cols = jnp.stack(
            [xt[:, :, a : a + o, b : b + o] for a in range(k) for b in range(k)], axis=1
        )
        return (
            (w.reshape(f, -1) @ cols.reshape(c * k * k, -1))
            .reshape(f, -1, o, o)
            .transpose(1, 0, 2, 3)
        )

    def rows(x, w, c, f, h, k=5):
        o = h - k + 1
        xt = x.transpose(1, 0, 2, 3)
        out = 0
        for a in range(k):
            cols = jnp.stack([xt[:, :, a : a + o, b : b + o] for b in range(k)], axis=1).reshape(
                c * k, -1
            )
            out = out + w[:, :, a, :].reshape(f, c * k) @ cols
        return out.reshape(f, -1, o, o).transpose(1, 0, 2, 3)

    def nhwc(x, w, c, f, h, k=5):
        o = h - k + 1
        xh = x.transpose(0, 2, 3, 1)
        cols = jnp.stack(
            [xh[:, a : a + o, b : b + o, :] for a in range(k) for b in range(k)], axis=3
        )
        out = cols.reshape(-1, k * k * c) @ w.transpose(2, 3, 1, 0).reshape(k * k * c, f)
        return out.reshape(x.shape[0], o, o, f).transpose(0, 3, 1, 2)

    def native(x, w, c, f, h, k=5):
        return lax.conv_general_dilated(x, w, (1, 1), "VALID")

    def best_ms(fn, *args):
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(10):
                out = fn(*args)
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - start) / 10 * 1000)
        return best

    print(
        "| layer (batch, in-channels, filters, size) | layout | forward ms | forward+backward ms |"
    )
    print("|---|---|---|---|")
    for n, (c, f, h) in (
        (10, (1, 20, 28)),
        (10, (20, 40, 12)),
        (256, (1, 20, 28)),
        (256, (20, 40, 12)),
    ):
        x = jnp.asarray(np.random.rand(n, c, h, h).astype(np.float32))
        w = jnp.asarray(np.random.rand(f, c, 5, 5).astype(np.float32))
        for name, conv in (
            ("im2col", im2col),
            ("per-row im2col", rows),
            ("NHWC im2col", nhwc),
            ("lax.conv", native),
        ):
            forward = partial(conv, c=c, f=f, h=h)
            both = jax.grad(
                lambda x, w, forward=forward: (forward(x, w) ** 2).sum(), argnums=(0, 1)
            )
            print(
                f"| {n}, {c}, {f}, {h} | {name} | {best_ms(forward, x, w):.2f} | {best_ms(both, x, w):.2f} |"
            )


def fast_compile() -> None:
    for optimizer in ("fast_run", "fast_compile"):
        net, fn, calls, built, total = _net_c_step(10, optimizer=optimizer)
        print(
            f"{optimizer}: build + first call {built:.1f} s, {_best_per_step(net, fn, calls, total) * 1e3:.3f} ms/step"
        )


def xla_cache() -> None:
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); from experiments import _net_c_step; "
        "print(_net_c_step(10)[3])"
    )
    with tempfile.TemporaryDirectory() as cache:
        for label in ("empty cache", "cache filled", "cache filled"):
            out = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                env=dict(os.environ, CONVNET_CACHE=cache),
            )
            print(f"new process, {label}: build + first call {float(out.stdout.split()[-1]):.2f} s")


_BREAKDOWN_CHILD = r"""
import time
t0 = time.perf_counter()
import numpy as np
from convnet import Network
from convnet.book import layers_for
from convnet.optimizers import SGD
from convnet.trainer import FitOptions, Trainer
marks = {"import": time.perf_counter() - t0}
rng = np.random.default_rng(0)
x, y = rng.random((5000, 784), dtype=np.float32), rng.integers(0, 10, 5000).astype(np.int32)
def lap(name, start):
    marks[name] = time.perf_counter() - start
    return time.perf_counter()
t = time.perf_counter()
net = Network(layers_for("relu", 10), 10, seed=0)
train = net.to_device((x, y), "training_data")
validation = net.to_device((x[:1000], y[:1000]), "validation_data")
t = lap("network", t)
trainer = Trainer(net, train, None, None, FitOptions(1, SGD(0.03), 0.1, verbose=False))
t = lap("train: PyTensor", t)
fn, index, _ = trainer.calls[0]
fn(index)
t = lap("train: first call (XLA)", t)
correct = net.evaluation_function(validation)
t = lap("accuracy: PyTensor", t)
int(correct(np.array(0, dtype=np.int64))[0])
t = lap("accuracy: first call (XLA)", t)
for i in range(400):
    fn(np.array(i, dtype=np.int64))
np.asarray(net.params[0].get_value())
marks["ms/step"] = (time.perf_counter() - t) / 400 * 1e3
print(" ".join(f"{k}={v:.2f}" for k, v in marks.items()))
"""


def compile_breakdown() -> None:
    """Seconds of a cold build of net C (new process, empty cache) by phase, per XLA flag."""
    base = os.environ.get("XLA_FLAGS", "")
    extra_flags = (
        "",
        "--xla_llvm_disable_expensive_passes=true",
        "--xla_backend_optimization_level=1",
    )
    for repeat in range(2):
        for extra in extra_flags:
            phases = _cold_build(XLA_FLAGS=f"{base} {extra}".strip())
            print(f"run {repeat + 1}, XLA flags +[{extra}]: {phases}", flush=True)


def _cold_build(**env: str) -> str:
    """_BREAKDOWN_CHILD's line, from a new process with an empty cache and ``env`` set."""
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run(
            [sys.executable, "-c", _BREAKDOWN_CHILD],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, CONVNET_CACHE=cache, **env),
        )
    return out.stdout.strip()


def conv_op() -> None:
    """Cold build phases and ms/step of net C: im2col as ~60 graph nodes vs one Im2Col Op."""
    for repeat in range(3):
        for conv in ("im2col", "patches"):
            print(f"run {repeat + 1}, {conv}: {_cold_build(CONVNET_CONV=conv)}", flush=True)


def torch_loop() -> None:
    """A 20-line PyTorch training loop of net C, outside the harness, as a sanity check."""
    import torch
    import torch.nn.functional as F  # noqa: N812 - PyTorch's usual name

    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = [
        torch.randn(20, 1, 5, 5) * 0.1,
        torch.zeros(20),
        torch.randn(40, 20, 5, 5) * 0.1,
        torch.zeros(40),
        torch.randn(100, 640) * 0.1,
        torch.zeros(100),
        torch.zeros(10, 100),
        torch.zeros(10),
    ]
    for p in params:
        p.requires_grad_()
    opt = torch.optim.SGD(params, lr=0.03)
    x, y = torch.rand(10, 1, 28, 28), torch.randint(0, 10, (10,))

    def step():
        opt.zero_grad(set_to_none=True)
        h = F.relu(F.max_pool2d(F.conv2d(x, params[0]), 2) + params[1].view(1, -1, 1, 1))
        h = F.relu(F.max_pool2d(F.conv2d(h, params[2]), 2) + params[3].view(1, -1, 1, 1))
        h = F.relu(F.linear(h.reshape(10, -1), params[4], params[5]))
        F.cross_entropy(F.linear(h, params[6], params[7]), y).backward()
        opt.step()

    for _ in range(50):
        step()
    start = time.perf_counter()
    for _ in range(500):
        step()
    per_step = (time.perf_counter() - start) / 500
    print(
        f"PyTorch {torch.__version__} eager, net C, mini-batch 10, one thread: "
        f"{per_step * 1e3:.2f} ms/step = {per_step * 5000:.1f} s per 50,000-image epoch"
    )


def reduction_dtype() -> None:
    """Net C steps with and without convnet's fix for PyTensor's float64 JAX reductions."""
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); import convnet.runtime.patches as p\n"
        "if sys.argv[1] == 'without': p._jax_outputs_keep_dtype = lambda: None\n"
        "from experiments import _net_c_step, _best_per_step\n"
        "net, fn, calls, built, total = _net_c_step(10)\n"
        "dtype = sorted({str(p.get_value(borrow=True).dtype) for p in net.params})\n"
        "print(f'{_best_per_step(net, fn, calls, total) * 1e3:.2f} ms/step, weights {dtype}')"
    )
    for variant in ("without", "with"):
        out = subprocess.run(
            [sys.executable, "-c", code, variant], capture_output=True, text=True, check=True
        )
        print(f"net C, {variant} the fix: {out.stdout.strip()}")


def micro_batch() -> None:
    """Net C ms per SGD step with each mini-batch split into micro-batches of each size."""
    from convnet import Network
    from convnet.book import layers_for

    rng = np.random.default_rng(0)
    n = 12_800
    data = rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)
    print("| mini-batch | micro-batch | ms per step (3 repeats, alternating) | median |")
    print("|---|---|---|---|")
    for mbs, parts in ((256, (256, 64, 32, 16, 8)), (128, (128, 32, 16)), (64, (64, 32, 16))):
        times: dict[int, list[float]] = {part: [] for part in parts}
        for _ in range(3):
            for part in parts:
                net = Network(layers_for("relu", mbs), mbs, backend="jax", seed=0)
                history = net.SGD(
                    data,
                    2,
                    mbs,
                    0.03,
                    lmbda=0.1,
                    verbose=False,
                    micro_batch=part,
                    steps_per_call=1,
                )
                times[part].append(history.seconds[1] / (n // mbs) * 1e3)
        for part, values in times.items():
            shown = " / ".join(f"{v:.1f}" for v in values)
            print(f"| {mbs} | {part} | {shown} | {sorted(values)[1]:.1f} |", flush=True)


GEMM_CHILD = r"""
import sys, time
import jax, jax.numpy as jnp
m, k, n, calls = map(int, sys.argv[1:])
f = jax.jit(lambda a, b: a @ b)
a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
f(a, b).block_until_ready()
best, busy = float("inf"), 0.0
for _ in range(3):
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        out = f(a, b)
    out.block_until_ready()
    wall = time.perf_counter() - start
    best, busy = min(best, wall), max(busy, (time.process_time() - cpu) / wall)
print(best, busy)
"""

PASS_CHILD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from timing import evaluation_seconds
from convnet import Network, load_mnist
from convnet.book import layers_for
_, _, test = load_mnist()
net = Network(layers_for("relu", 10), 10, seed=0, backend="jax")
print(sorted(evaluation_seconds(net, net.to_device(test, "test_data"), repeats=5))[2])
"""


def _child(code: str, *args: object, **run: Any) -> list[float]:
    """Run ``code`` in a new Python process; the numbers on its last line of output."""
    command = [sys.executable, "-c", code, *map(str, args)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, **run)
    return [float(v) for v in out.stdout.strip().splitlines()[-1].split()]


def _gemm_seconds(shape: tuple[int, int, int], calls: int, **run: Any) -> tuple[float, float]:
    """Best of 3 runs of ``calls`` XLA GEMMs of ``shape`` (m, k, n) in a new process, and
    the CPU-seconds it used per second (how many cores XLA kept busy)."""
    seconds, busy = _child(GEMM_CHILD, *shape, calls, **run)
    return seconds, busy


def _pass_seconds(native: bool, every_core: bool) -> float:
    """Median of 5 10,000-image evaluation passes of net C, in a new process."""
    env = dict(os.environ, CONVNET_KERNEL="1" if native else "0")
    here = os.path.dirname(os.path.abspath(__file__))
    preexec = all_cores if every_core else None
    return _child(PASS_CHILD, here, env=env, preexec_fn=preexec)[0]


def eval_limit() -> None:
    """What bounds one 10,000-image pass of net C: its GEMMs alone on one core; the pass
    with XLA's im2col and with convnet's kernel, on one core and on all of them."""
    batch, calls = 50, 10_000 // 50
    gemms = {  # (m, k, n) of each GEMM in one evaluation call of 50 images
        "conv 1 (20x25 @ 25x28,800)": (20, 25, batch * 24 * 24),
        "conv 2 (40x500 @ 500x3,200)": (40, 500, batch * 8 * 8),
        "FC (50x640 @ 640x100)": (batch, 640, 100),
        "softmax (50x100 @ 100x10)": (batch, 100, 10),
    }
    print("| XLA GEMM on one core, 200 calls = 10,000 images | seconds | GFLOP/s |")
    print("|---|---|---|")
    floor = 0.0
    for name, (m, k, n) in gemms.items():
        seconds, _ = _gemm_seconds((m, k, n), calls)
        floor += seconds
        print(f"| {name} | {seconds:.3f} | {2 * m * k * n * calls / seconds / 1e9:.0f} |")
    print(f"| the four together: no im2col, no pooling, no calls | {floor:.3f} | |")
    big, _ = _gemm_seconds((2048, 2048, 2048), 10)
    print(
        f"| for scale: 2048x2048 @ 2048x2048, 10 calls | {big:.3f} | {2 * 2048**3 * 10 / big / 1e9:.0f} |"
    )
    # Not pinned, with XLA's "single-thread" flag: does that keep its GEMMs on one core?
    flagged = dict(os.environ, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")
    free, busy = _gemm_seconds((2048, 2048, 2048), 10, env=flagged, preexec_fn=all_cores)
    print(
        f"| the same, not pinned, --xla_cpu_multi_thread_eigen=false: {busy:.2f} CPU-seconds "
        f"per second | {free:.3f} | {2 * 2048**3 * 10 / free / 1e9:.0f} |"
    )
    print("\n| convnet's pass (median of 5, new process each) | one core | all cores |")
    print("|---|---|---|")
    for native, name in (
        (False, "XLA: im2col, GEMM, pooling (CONVNET_KERNEL=0)"),
        (True, "convnet's conv + pool kernel"),
    ):
        one, every = (_pass_seconds(native, every_core) for every_core in (False, True))
        print(f"| {name} | {one:.2f} s | {every:.2f} s |", flush=True)


LINKER_CHILD = r"""
import sys, time
import numpy as np
from convnet import Network
from convnet.book import layers_for
rng = np.random.default_rng(0)
x = rng.random((3000, 784), dtype=np.float32)
y = rng.integers(0, 10, 3000).astype(np.int32)
start = time.perf_counter()
net = Network(layers_for("relu", 10), 10, backend=sys.argv[1], seed=0)
history = net.SGD((x, y), 2, 10, 0.03, lmbda=0.1, verbose=False)
total = time.perf_counter() - start
# Building and compiling: everything beyond two epochs at the steady (second) epoch's speed.
print(total - 2 * history.seconds[1], history.seconds[1] / 300 * 1e3, history.train_cost[1])
"""


def linker_conv() -> None:
    """Net C on the C and Numba backends, convolution as the graph of slices or as the
    Im2Col Op (its C code / Numba loop): seconds to build the training function in a new
    process with empty caches (cold) and in a second one that finds them filled (warm),
    ms per SGD step, and the cost (must agree)."""
    for backend in ("c", "numba"):
        for conv in ("im2col", "patches"):
            with tempfile.TemporaryDirectory() as caches:
                env = dict(
                    os.environ,
                    CONVNET_CONV=conv,
                    PYTENSOR_FLAGS=f"base_compiledir={caches}/pytensor",
                    NUMBA_CACHE_DIR=f"{caches}/numba",
                    CONVNET_CACHE=f"{caches}/convnet",
                )
                cold, ms, cost = _child(LINKER_CHILD, backend, env=env)
                warm, ms_warm, _ = _child(LINKER_CHILD, backend, env=env)
            print(
                f"{backend}, {conv}: build cold {cold:.1f} s, warm {warm:.1f} s; "
                f"{ms:.2f} / {ms_warm:.2f} ms/step; cost {cost:.6f}",
                flush=True,
            )


def optimizers() -> None:
    """Test accuracy of the book's net A after one epoch on real MNIST (CONVNET_DATA) with
    the book's SGD (eta 0.1), Adam (0.001) and Nesterov (0.01, momentum 0.9), seeds 0-2;
    and, with PyTorch installed (the bench extra), torch.optim.SGD's plain and Nesterov
    rules from the same initial weights on the same mini-batches: whether the gap between
    Nesterov and SGD is the method's or convnet's."""
    from convnet import Network, load_mnist
    from convnet import optimizers as rules
    from convnet.book import layers_for

    training, _, test = load_mnist()
    choices = {
        "sgd 0.1": rules.SGD(0.1),
        "adam 0.001": rules.Adam(0.001),
        "nesterov 0.01/0.9": rules.SGD(0.01, momentum=0.9, nesterov=True),
    }
    try:
        import torch  # noqa: F401
    except ImportError:
        peers = {}
    else:
        peers = {
            "torch sgd 0.1": {"lr": 0.1},
            "torch nesterov 0.01/0.9": {"lr": 0.01, "momentum": 0.9, "nesterov": True},
        }
    print("| seed | " + " | ".join([*choices, *peers]) + " |")
    print("|---" * (1 + len(choices) + len(peers)) + "|")
    for seed in range(3):
        row = []
        for optimizer in choices.values():
            net = Network(layers_for("shallow", 10), 10, seed=seed)
            history = net.fit(training, 1, optimizer=optimizer, test_data=test, verbose=False)
            row.append(f"{history.test_accuracy[0]:.2%}")
        for settings in peers.values():
            net = Network(layers_for("shallow", 10), 10, seed=seed)
            row.append(f"{_torch_one_epoch(net, training, test, 10, settings):.2%}")
        print(f"| {seed} | " + " | ".join(row) + " |", flush=True)


def _torch_one_epoch(net, training, test, mbs: int, settings: dict) -> float:
    """PyTorch's test accuracy after one epoch from ``net``'s initial weights, the same
    mini-batches in the same order, network3's cost (no L2 here)."""
    import torch
    from peers import torch_model

    torch.set_num_threads(1)
    model = torch_model(net, net.get_weights())
    optimizer = torch.optim.SGD(model.parameters(), **settings)
    x = torch.from_numpy(training[0])
    y = torch.from_numpy(training[1].astype(np.int64))
    for start in range(0, len(x) - mbs + 1, mbs):
        optimizer.zero_grad(set_to_none=True)
        logits = model(x[start : start + mbs])
        torch.nn.functional.cross_entropy(logits, y[start : start + mbs]).backward()
        optimizer.step()
    with torch.no_grad():
        predicted = model(torch.from_numpy(test[0])).argmax(1).numpy()
    return float(np.mean(predicted == test[1]))


BREAKDOWN_CHILD = r"""
import sys, time
import numpy as np, pytensor, pytensor.tensor as pt
from convnet import ops
from convnet.runtime import backend as backends
mbs, conv = int(sys.argv[1]), sys.argv[2]
mode = backends.resolve("jax", "cpu").apply()
rng = np.random.default_rng(0)
row = []
for (c, h, w), (f, kh, kw) in [((1, 28, 28), (20, 5, 5)), ((20, 12, 12), (40, 5, 5))]:
    x = pt.tensor4("x", dtype="float32", shape=(mbs, c, h, w))
    filters = pt.tensor4("w", dtype="float32", shape=(f, c, kh, kw))
    shapes = {"image_shape": (c, h, w), "filter_shape": (f, c, kh, kw)}
    if conv == "fused":
        out = ops.conv_pool_train(x, filters, poolsize=(2, 2), **shapes)
    else:
        oh, ow = h - kh + 1, w - kw + 1
        out = ops.max_pool(ops.conv2d(x, filters, implementation="patches", **shapes),
                           image_shape=(f, oh, ow), poolsize=(2, 2))
    xv = rng.random((mbs, c, h, w), dtype=np.float32)
    xv[:, :, :4] = 0.0  # MNIST's blank rows
    wv = rng.normal(0, 0.1, (f, c, kh, kw)).astype(np.float32)
    g = pt.constant(rng.normal(size=(mbs, f, (h - kh + 1) // 2, (w - kw + 1) // 2)).astype("float32"))
    cost = (out * g).sum()
    for outputs in ([out], pt.grad(cost, [filters]), pt.grad(cost, [x, filters])):
        fn = pytensor.function([x, filters], outputs, mode=mode)
        fn(xv, wv)
        calls = max(20, 20_000 // mbs)
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                fn(xv, wv)
            best = min(best, (time.perf_counter() - start) / calls)
        row.append(best / mbs * 1e6)
print(*row)
"""


def train_breakdown() -> None:
    """Microseconds per image of net C's two conv layers' training passes, fused kernel
    against XLA's im2col formulation: the forward pass, + the weight gradient, + the image
    gradient (needed below the first layer), each a compiled function on one core."""
    print("| mini-batch | conv | layer 1 fwd | + dW | + dX | layer 2 fwd | + dW | + dX |")
    print("|---|---|---|---|---|---|---|---|")
    for mbs in (10, 64, 256):
        for conv in ("fused", "patches"):
            row = _child(BREAKDOWN_CHILD, mbs, conv)
            print(f"| {mbs} | {conv} | " + " | ".join(f"{v:.1f}" for v in row) + " |", flush=True)


STEP_CHILD = r"""
import sys
import numpy as np
from convnet import Network
from convnet.book import layers_for
net_name, mbs = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = rng.random((2000, 784), dtype=np.float32)
y = rng.integers(0, 10, 2000).astype(np.int32)
net = Network(layers_for(net_name, mbs), mbs, seed=0)
best = min(
    net.SGD((x, y), 2, mbs, 0.03, verbose=False, steps_per_call=100).seconds[1]
    for _ in range(3)
)
print(best / 2000 * 1e6)
"""

FIRST_LAYER_CHILD = r"""
import sys, time
import numpy as np, pytensor, pytensor.tensor as pt
from convnet import ops
from convnet.runtime import backend as backends
mbs, f = int(sys.argv[1]), int(sys.argv[2])
mode = backends.resolve("jax", "cpu").apply()
rng = np.random.default_rng(0)
x = pt.tensor4("x", dtype="float32", shape=(mbs, 1, 28, 28))
filters = pt.tensor4("w", dtype="float32", shape=(f, 1, 5, 5))
out = ops.conv_pool_train(x, filters, poolsize=(2, 2), image_shape=(1, 28, 28),
                          filter_shape=(f, 1, 5, 5))
xv = rng.random((mbs, 1, 28, 28), dtype=np.float32)
xv[:, :, :4] = 0.0
wv = rng.normal(0, 0.1, (f, 1, 5, 5)).astype(np.float32)
g = pt.constant(rng.normal(size=(mbs, f, 12, 12)).astype("float32"))
fn = pytensor.function([x, filters], pt.grad((out * g).sum(), [filters]), mode=mode)
fn(xv, wv)
calls, best = max(20, 20_000 // mbs), np.inf
for _ in range(3):
    start = time.perf_counter()
    for _ in range(calls):
        fn(xv, wv)
    best = min(best, (time.perf_counter() - start) / calls)
print(best / mbs * 1e6)
"""


def ensemble_bound() -> None:
    """What training 5 members as one program could save on this core, at most: only the
    first conv layer reads the same input in every member, so its 5 x 20 filters can be one
    100-filter pass; every later layer (and the update) has 5 members' own weights and
    inputs, the same arithmetic and memory traffic however it is batched. Bound: 5 members'
    step over (5 steps less 5 first layers plus one 100-filter first layer)."""
    print(
        "| net | step (us/image) | first layer, 20 filters (fwd + dW) | 100 filters | "
        "5 apart / 5 as one program, at best |"
    )
    print("|---|---|---|---|---|")
    first, first_100 = (_child(FIRST_LAYER_CHILD, 10, f)[0] for f in (20, 100))
    for name in ("relu", "dropout"):
        step = _child(STEP_CHILD, name, 10)[0]
        bound = 5 * step / (5 * (step - first) + first_100)
        print(f"| {name} | {step:.1f} | {first:.1f} | {first_100:.1f} | {bound:.2f} |", flush=True)


def fc_profile() -> None:
    """Microseconds per mini-batch of 10 for each pass over the book's dropout net's two FC
    layers' weights (640 x 1000, 1000 x 1000) under XLA on one core, each a jitted
    function, best of 3 x 200 calls; and the weight update as a GEMM plus an elementwise
    pass against the same update written as 10 rank-one products that XLA fuses into one
    pass over the donated weights."""
    import jax
    import jax.numpy as jnp

    def micros(function: Any, *args: Any, donate: bool = False) -> float:
        weights, rest = args[0], args[1:]
        out = function(weights, *rest)
        weights = out if donate else weights
        jax.block_until_ready(out)
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(200):
                out = function(weights, *rest)
                weights = out if donate else weights
            jax.block_until_ready(out)
            best = min(best, (time.perf_counter() - start) / 200)
        return best * 1e6

    rng = np.random.default_rng(0)
    print(
        "| weights | forward h W | dX = d W^T | dW = h^T d | update W - eta dW | "
        "dW + update, one GEMM then add (donated) | as 10 rank-one products (donated) |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, n in ((640, 1000), (1000, 1000)):
        w = jnp.asarray(rng.random((k, n), dtype=np.float32))
        h = jnp.asarray(rng.random((10, k), dtype=np.float32))
        d = jnp.asarray(rng.random((10, n), dtype=np.float32))
        gemm = jax.jit(lambda w, h, d: w - 0.03 * (h.T @ d), donate_argnums=0)
        outer = jax.jit(
            lambda w, h, d: w - 0.03 * sum(h[m][:, None] * d[m][None, :] for m in range(10)),
            donate_argnums=0,
        )
        row = [
            micros(jax.jit(lambda w, h: h @ w), w, h),
            micros(jax.jit(lambda w, d: d @ w.T), w, d),
            micros(jax.jit(lambda h, d: h.T @ d), h, d),
            micros(jax.jit(lambda w, g: w - 0.03 * g), w, w),
            micros(gemm, w.copy(), h, d, donate=True),
            micros(outer, w.copy(), h, d, donate=True),
        ]
        print(f"| {k} x {n} | " + " | ".join(f"{v:.0f}" for v in row) + " |", flush=True)


def dense_sgd() -> None:
    """Microseconds per call of the fused dense backward + SGD step (convnet's kernel,
    ``DenseSgd``) against XLA's products and step, both stepping donated weights in place,
    for the book's FC1000 layers' weights at mini-batches 1 to 32 (where the kernel pays:
    convnet.dense.MAX_ROWS), its FC100 layers' and two smaller matrices' at mini-batch 10
    (convnet.dense.MIN_WEIGHTS), then with momentum at mini-batch 10. One pinned core, best of
    3 x 100 calls."""
    import jax
    import jax.numpy as jnp

    from convnet.runtime import kernel

    target = kernel.dense_target()
    if target is None:
        raise SystemExit(f"the kernel is not built here: {kernel.why_not()}")
    rng = np.random.default_rng(0)
    eta, decay = np.float32(0.03), np.float32(1e-4)

    def micros(function: Any, w: Any, x: Any, g: Any) -> float:
        _, w = function(w, x, g)
        jax.block_until_ready(w)
        best = np.inf
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(100):
                _, w = function(w, x, g)
            jax.block_until_ready(w)
            best = min(best, (time.perf_counter() - start) / 100)
        return best * 1e6

    print("| weights | mini-batch | kernel (us) | XLA (us) | XLA / kernel |")
    print("|---|---|---|---|---|")
    for k, n in ((640, 1000), (1000, 1000), (640, 100), (784, 100), (256, 128), (100, 100)):
        for m in (1, 2, 4, 6, 8, 10, 12, 16, 32) if n == 1000 else (10,):
            x = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
            g = jnp.asarray(rng.standard_normal((m, n), dtype=np.float32))
            shapes = (
                jax.ShapeDtypeStruct((m, k), jnp.float32),
                jax.ShapeDtypeStruct((k, n), jnp.float32),
            )
            call = jax.ffi.ffi_call(f"{target}_sgd", shapes, input_output_aliases={0: 1})
            fused = jax.jit(lambda w, x, g, call=call: call(w, x, g, eta, decay), donate_argnums=0)
            xla = jax.jit(
                lambda w, x, g: (g @ w.T, w - eta * (x.T @ g + decay * w)), donate_argnums=0
            )
            ours = micros(fused, jnp.asarray(rng.standard_normal((k, n), dtype=np.float32)), x, g)
            theirs = micros(xla, jnp.asarray(rng.standard_normal((k, n), dtype=np.float32)), x, g)
            print(
                f"| {k} x {n} | {m} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.2f} |", flush=True
            )
    print("\nWith momentum 0.9 (classical), mini-batch 10, the velocity stepped in place too:")
    print("| weights | kernel (us) | XLA (us) | XLA / kernel |")
    print("|---|---|---|---|")
    mu, classical = np.float32(0.9), np.float32(0.0)
    for k, n in ((640, 1000), (1000, 1000)):
        x = jnp.asarray(rng.standard_normal((10, k), dtype=np.float32))
        g = jnp.asarray(rng.standard_normal((10, n), dtype=np.float32))
        shape = jax.ShapeDtypeStruct((k, n), jnp.float32)
        results = (jax.ShapeDtypeStruct((10, k), jnp.float32), shape, shape)
        call = jax.ffi.ffi_call(f"{target}_sgd", results, input_output_aliases={0: 1, 5: 2})

        def fused(wv, x, g, call=call):
            dx, w, v = call(wv[0], x, g, eta, decay, wv[1], mu, classical)
            return dx, (w, v)

        def xla(wv, x, g):
            w, v = wv
            moved = mu * v - eta * (x.T @ g + decay * w)
            return g @ w.T, (w + moved, moved)

        def pair(k=k, n=n):
            return tuple(jnp.asarray(rng.standard_normal((k, n), dtype=np.float32)) for _ in "wv")

        ours = micros(jax.jit(fused, donate_argnums=0), pair(), x, g)
        theirs = micros(jax.jit(xla, donate_argnums=0), pair(), x, g)
        print(f"| {k} x {n} | {ours:.0f} | {theirs:.0f} | {theirs / ours:.2f} |", flush=True)


def dense_forward() -> None:
    """Microseconds per product ``x . w``, the dense kernel's against XLA's GEMM, for the
    book's FC1000 layers' weights at mini-batches 1 to 16 (convnet.dense.MAX_ROWS), and at
    mini-batch 10 for its FC100 layers' and two smaller matrices (MIN_WEIGHTS): 100
    products in one XLA program (as training runs its steps), each x made from the last
    product so none is skipped, the two alternately, one pinned core, best of 2 x 5 runs."""
    import jax
    import jax.numpy as jnp

    from convnet.runtime import kernel

    target = kernel.dense_target()
    if target is None:
        raise SystemExit(f"the kernel is not built here: {kernel.why_not()}")
    rng = np.random.default_rng(0)

    def looped(product: Any) -> Any:
        def run(x, w):
            def body(_, x):
                return x + 1e-30 * product(x, w)[:, :1]

            return jax.lax.fori_loop(0, 100, body, x)

        return jax.jit(run)

    def micros(function: Any, x: Any, w: Any) -> float:
        return _best_micros(lambda: function(x, w), 100)

    print("| weights | mini-batch | kernel (us) | XLA (us) | XLA / kernel |")
    print("|---|---|---|---|---|")
    for k, n in ((640, 1000), (1000, 1000), (640, 100), (784, 100), (256, 128), (100, 100)):
        w = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32))
        for m in (1, 2, 4, 6, 8, 10, 12, 16) if n == 1000 else (10,):
            x = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
            out = jax.ShapeDtypeStruct((m, n), jnp.float32)
            ours = looped(jax.ffi.ffi_call(f"{target}_forward", out))
            theirs = looped(jnp.dot)
            a = min(micros(ours, x, w) for _ in range(2))
            b = min(micros(theirs, x, w) for _ in range(2))
            print(f"| {k} x {n} | {m} | {a:.0f} | {b:.0f} | {b / a:.2f} |", flush=True)


def _hlo_ops(hlo: str) -> dict[str, str]:
    """What each instruction of a compiled HLO module is, by name: the kernel's entry
    point for a custom call and its result's shape (e.g. "conv_pool_grad_w
    f32[20,1,5,5]"), "GEMM" for a dot or an XNNPACK fusion, else its kind and shape (e.g.
    "fusion f32[10,20,12,12]")."""
    kinds = {}
    for line in hlo.splitlines():
        line = line.strip().removeprefix("ROOT ")
        if not line.startswith("%") or " = " not in line:
            continue
        name, rest = line[1:].split(" = ", 1)
        shape = rest.split(" ", 1)[0]
        if "custom_call_target=" in rest:
            target = rest.split('custom_call_target="', 1)[1].split('"', 1)[0]
            kinds[name] = f"{target.removeprefix('convnet_')} {shape.lstrip('(').split('{')[0]}"
        elif " dot(" in rest or "__ynn_fusion" in rest:
            kinds[name] = f"GEMM {shape}"
        else:
            kinds[name] = f"{rest.split('(', 1)[0].split(' ')[-1]} {shape}"
    return kinds


TOP = int(os.environ.get("PROFILE_TOP", "10"))  # ops listed by step_profile


def step_profile(
    net_name: str = "relu",
    shapes: tuple = ((10, 1), (10, 100), (64, 1), (256, 1)),
    lmbda: float = 0.1,
) -> None:
    """Net C's training step op by op (or net ``net_name``'s, with the L2 term ``lmbda``): XLA's profiler traces a pass of about 1,000 images
    through the compiled training function (one step per call, or 100 in a loop), and
    each op's time is summed per image; "outside the ops" is the step's time (measured
    without the profiler, best of 3) less the ops' (calls, loop control, Python). On
    MNIST's first images where CONVNET_DATA is set, else on synthetic data."""
    import glob
    import gzip
    import json

    import jax

    real = bool(os.environ.get("CONVNET_DATA"))
    print(f"# net {net_name} on {'MNIST (CONVNET_DATA)' if real else 'synthetic data'}")
    for mbs, steps in shapes:
        images = 1024 if mbs == 256 else 1000
        net, fn, calls, _, total = _net_c_step(
            mbs, steps, n=images, real=real, name=net_name, lmbda=lmbda
        )
        per_image = _best_per_step(net, fn, calls, total) / mbs * 1e6
        if steps > 1:  # a StepLoop
            lowered = fn.lower(calls[0])
        else:
            args = [s[0] for s in fn.vm.inputs]
            args[0] = calls[0]
            lowered = fn.vm.jit_fn.lower(*args)
        kinds = _hlo_ops(lowered.compile().as_text())
        with tempfile.TemporaryDirectory() as folder:
            with jax.profiler.trace(folder):
                for index in calls:
                    fn(index)
                jax.block_until_ready([t.get_value(borrow=True) for t in net.device_copies.twins])
            (trace,) = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
            with gzip.open(trace) as handle:
                events = json.load(handle)["traceEvents"]
        sums: dict[str, float] = {}
        for event in events:
            name = event.get("name", "")
            if event.get("ph") == "X" and name in kinds and not name.startswith("while"):
                sums[name] = sums.get(name, 0.0) + event["dur"] / images
        by_kind: dict[str, float] = {}
        for name, micros in sums.items():
            kind = kinds[name].split(" ")[0]
            by_kind[kind] = by_kind.get(kind, 0.0) + micros
        per_call = f"{steps} step{'s' if steps > 1 else ''} per call"
        print(f"\nmini-batch {mbs}, {per_call}: {per_image:.1f} us per image")
        print("| op | what | us per image |")
        print("|---|---|---|")
        for name, micros in sorted(sums.items(), key=lambda item: -item[1])[:TOP]:
            print(f"| {name} | {kinds[name]} | {micros:.1f} |")
        kinds_text = ", ".join(
            f"{kind} {micros:.1f}" for kind, micros in sorted(by_kind.items(), key=lambda i: -i[1])
        )
        outside = per_image - sum(sums.values())
        print(
            f"| **all ops, by kind** | {kinds_text}; outside the ops {outside:.1f} | |", flush=True
        )


SCAN_CHILD = r"""
import sys, time
import numpy as np
import jax
from convnet import Network
from convnet.book import layers_for
from convnet.optimizers import SGD
name, steps = sys.argv[1], int(sys.argv[2])
net = Network(layers_for(name, 10), 10, seed=0, backend="jax")
rng = np.random.default_rng(0)
x, y = rng.random((5000, 784), dtype=np.float32), rng.integers(0, 10, 5000).astype(np.int32)
data = net.to_device((x, y), "t")
order, eta, cost = (
    net.backend.shared(v, k)
    for k, v in (("o", np.arange(5000)), ("e", np.float32(0.03)), ("c", np.float32(0.0)))
)
start = time.perf_counter()
fn = net.backend.repeat(net.train_function(data, order, eta, 0.1, cost, SGD(0.03)), steps)
fn(np.array(0, dtype=np.int64))
jax.block_until_ready(cost.get_value(borrow=True))
built = time.perf_counter() - start
calls = [np.array(i, dtype=np.int64) for i in range(0, 500, steps)]
best = float("inf")
for _ in range(3):
    start = time.perf_counter()
    for index in calls:
        fn(index)
    jax.block_until_ready(cost.get_value(borrow=True))
    best = min(best, (time.perf_counter() - start) / 500)
print(built, best * 1e6)
"""


def scan_threshold() -> None:
    """Whether a short run should loop over steps: for each book net, the training
    function's build in a new process with empty caches (cold) and again with them filled
    (warm), and microseconds per step, at 1 and 100 steps per call; then what the loop
    saves over one 5,000-step epoch (mini-batch 10) less its extra cold build. The build
    is timed to the end of the first call, less that call's steps beyond the first (a
    100-step call trains 99 more mini-batches, which the epoch needs anyway)."""
    print("| net | steps per call | cold build | warm | us per step |")
    print("|---|---|---|---|---|")
    for name in ("shallow", "conv", "relu", "dropout"):
        row = {}
        for steps in (1, 100):
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, CONVNET_CACHE=cache)
                cold, _ = _child(SCAN_CHILD, name, steps, env=env)
                warm, micros = _child(SCAN_CHILD, name, steps, env=env)
            extra = (steps - 1) * micros / 1e6
            cold, warm = cold - extra, warm - extra
            row[steps] = (cold, micros)
            print(f"| {name} | {steps} | {cold:.2f} s | {warm:.2f} s | {micros:.0f} |", flush=True)
        saved = (row[1][1] - row[100][1]) * 5000 / 1e6 - (row[100][0] - row[1][0])
        print(f"| {name} | one 5,000-step epoch: the loop saves {saved:+.2f} s cold | | | |")


def fusion_shapes() -> None:
    """Microseconds per step of a ConvPoolLayer's bias + ReLU and the ReLU's gradient under
    XLA (what ``ConvPoolLayer.get_output_for`` leaves to XLA's fusions), on the book's two
    conv layers' pooled shapes at mini-batch 10: (n, f, qh, qw) against (n, f, qh * qw)
    (convnet.layers.FLAT_MAPS). 1,000 steps in one XLA loop, each feeding the next, best
    of 5, one pinned core."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)

    def micros(shape: tuple[int, ...]) -> float:
        pooled = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
        grad = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
        bias = jnp.asarray(rng.standard_normal(shape[1], dtype=np.float32))
        bias = bias.reshape((1, shape[1]) + (1,) * (len(shape) - 2))

        def body(_, carry):
            z, g = carry
            out = jnp.maximum(z + bias, 0)
            back = g * (z + bias > 0).astype(jnp.float32)
            return out * 0.5 - 0.1, back * 0.9 + z

        run = jax.jit(lambda z, g: jax.lax.fori_loop(0, 1000, body, (z, g)))
        return _best_micros(lambda: run(pooled, grad), 1000)

    print("| layer | (n, f, qh, qw) (us) | (n, f, qh * qw) (us) | flat / 4-D |")
    print("|---|---|---|---|")
    for name, (f, q) in (("first (20 x 12 x 12)", (20, 12)), ("second (40 x 4 x 4)", (40, 4))):
        four, flat = micros((10, f, q, q)), micros((10, f, q * q))
        print(f"| {name} | {four:.1f} | {flat:.1f} | {flat / four:.2f} |", flush=True)


def dense_stream() -> None:
    """The dropout net's dense layers against this core's memory: one pinned core, the two
    FC1000 weight matrices (640 x 1000 and 1000 x 1000, 6.6 MB: more than L2) taken as a
    training step takes them (both read by the forward products, then each read and
    written by the fused step, the second layer first), by the dense kernel at mini-batch
    10 (100 steps in one XLA loop) and by plain streaming in NumPy (a product with a
    vector, OpenBLAS's sgemv, for the reads; an in-place scaling for the read and write):
    the kernel's time against the time the bytes alone take, per pass and for the step.
    Best of 6."""
    import jax
    import jax.numpy as jnp
    from threadpoolctl import threadpool_limits

    from convnet.runtime import kernel

    target = kernel.dense_target()
    if target is None:
        raise SystemExit(f"the kernel is not built here: {kernel.why_not()}")
    rng = np.random.default_rng(0)
    weights = [
        rng.standard_normal(shape, dtype=np.float32) * 0.01 for shape in ((640, 1000), (1000, 1000))
    ]
    x = jnp.asarray(rng.standard_normal((10, 640), dtype=np.float32))
    h = jnp.asarray(rng.standard_normal((10, 1000), dtype=np.float32))

    def forward(x: Any, w: Any) -> Any:
        out = jax.ShapeDtypeStruct((10, w.shape[1]), jnp.float32)
        return jax.ffi.ffi_call(f"{target}_forward", out)(x, w)

    def sgd(w: Any, x: Any, g: Any) -> Any:
        shapes = (
            jax.ShapeDtypeStruct(x.shape, jnp.float32),
            jax.ShapeDtypeStruct(w.shape, jnp.float32),
        )
        call = jax.ffi.ffi_call(f"{target}_sgd", shapes, input_output_aliases={0: 1})
        return call(w, x, g, np.float32(1e-6), np.float32(0.0))

    def forwards(_, carry):  # each product from the last: none is hoisted or skipped
        w1, w2, x, h = carry
        out = forward(x, w1)
        h = forward(out * 1e-3, w2)
        return w1, w2, x + 1e-30 * h[:, :640], h

    def steps(_, carry):
        w1, w2, x, h = carry
        dh, w2 = sgd(w2, h, h)
        dx, w1 = sgd(w1, x, h + 1e-30 * dh)
        return w1, w2, x + 1e-30 * dx, h

    def kernel_seconds(body: Any) -> float:
        run = jax.jit(lambda *c: jax.lax.fori_loop(0, 100, body, c), donate_argnums=(0, 1))
        state = (jnp.asarray(weights[0]), jnp.asarray(weights[1]))
        best = np.inf
        for _ in range(6):
            start = time.perf_counter()
            w1, w2, *_ = run(*state, x, h)
            jax.block_until_ready(w2)
            best = min(best, (time.perf_counter() - start) / 100)
            state = (w1, w2)
        return best

    ones = np.ones(1000, dtype=np.float32)

    def stream_seconds(write: bool) -> float:
        best = np.inf
        with threadpool_limits(1):
            for _ in range(6):
                start = time.perf_counter()
                for _ in range(20):
                    for w in weights[::-1] if write else weights:
                        np.multiply(w, np.float32(1.0), out=w) if write else w @ ones[: w.shape[1]]
                best = min(best, (time.perf_counter() - start) / 20)
        return best

    rows = (
        ("the forward products (read)", kernel_seconds(forwards), stream_seconds(False), 1),
        ("the fused steps (read and write)", kernel_seconds(steps), stream_seconds(True), 2),
    )
    size = sum(w.nbytes for w in weights) / 1e9
    print(f"# one core; the two matrices: {size * 1e3:.2f} MB")
    print(
        "| pass | kernel (us per image) | streaming alone (us per image) | streaming GB/s | kernel / streaming |"
    )
    print("|---|---|---|---|---|")
    for name, ours, stream, passes in rows:
        print(
            f"| {name} | {ours * 1e5:.1f} | {stream * 1e5:.1f} | {passes * size / stream:.1f} "
            f"| {ours / stream:.2f} |"
        )
    ours, stream = rows[0][1] + rows[1][1], rows[0][2] + rows[1][2]
    print(
        f"| the step | {ours * 1e5:.1f} | {stream * 1e5:.1f} | {3 * size / stream:.1f} | {ours / stream:.2f} |"
    )


COMMANDS = {
    "train-breakdown": train_breakdown,
    "ensemble-bound": ensemble_bound,
    "fc-profile": fc_profile,
    "dense-sgd": dense_sgd,
    "dense-forward": dense_forward,
    "step-profile": step_profile,
    # the dropout row's own L2 term: none (the book's recipe, convnet.book)
    "dropout-step-profile": lambda: step_profile("dropout", ((10, 1), (10, 100)), lmbda=0.0),
    "scan-threshold": scan_threshold,
    "fusion-shapes": fusion_shapes,
    "dense-stream": dense_stream,
    "optimizers": optimizers,
    "linker-conv": linker_conv,
    "eval-limit": eval_limit,
    "reduction-dtype": reduction_dtype,
    "micro-batch": micro_batch,
    "compile-breakdown": compile_breakdown,
    "conv-op": conv_op,
    "torch-loop": torch_loop,
    "steps-per-call": steps_per_call,
    "eval-batch": eval_batch,
    "call-overhead": call_overhead,
    "conv-layouts": conv_layouts,
    "fast-compile": fast_compile,
    "xla-cache": xla_cache,
}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python benchmarks/experiments.py {{{'|'.join(COMMANDS)}}}")
    COMMANDS[sys.argv[1]]()
