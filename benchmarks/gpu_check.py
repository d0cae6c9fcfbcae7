#!/usr/bin/env python
"""On a machine with an NVIDIA GPU: is convnet right there, and how fast against PyTorch?

1. One training step of net C on the GPU equals the same step on the CPU (JAX on the CPU,
   and PyTensor's C backend where it can compile), with TF32 products (XLA's default on
   the GPU and convnet's) and with full float32 ones.
2. Cold and warm compile of net C's training + accuracy functions, each in a new process.
3. Net C at mini-batch 10 and 256: convnet (JAX on the GPU) against the peers a GPU user
   would pick: PyTorch eager (CUDA), ``torch.compile(mode="reduce-overhead")`` (CUDA
   graphs), hand-written JAX with one jitted step per call and with ``lax.scan`` over 100
   steps; same weights, same data in the same order, alternating, median of repeats; the
   ratios to PyTorch eager and to the fastest peer.
   convnet runs with each conv implementation (cuDNN through ``lax`` / the Im2Col Op), with
   one or 100 SGD steps per compiled call and with float32 or TF32 products, so the
   per-device defaults rest on numbers. A timing counts only if convnet's (default) and
   PyTorch's mean training losses agree.
4. One 10,000-image evaluation pass.

Runs on synthetic MNIST-shaped data (a GPU machine may have no MNIST); ``--device cpu
--quick`` smoke-tests this script anywhere. Launched by ``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# PyTorch shares the card with JAX in this process: leave it room.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from peers import jax_run, jax_scan_run, torch_run
from timing import evaluation_seconds

from convnet import Network
from convnet.book import layers_for

ROOT = Path(__file__).resolve().parent.parent

# A new process that builds net C's training and accuracy functions and calls each once
# (XLA compiles on the first call): argv = device, steps per call.
COMPILE_CHILD = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np
from convnet import Network
from convnet.book import layers_for
from convnet.optimizers import SGD
from convnet.trainer import FitOptions, Trainer
imported = time.perf_counter() - t0
rng = np.random.default_rng(0)
x, y = rng.random((5000, 784), dtype=np.float32), rng.integers(0, 10, 5000).astype(np.int32)
start = time.perf_counter()
net = Network(layers_for("relu", 10), 10, device=sys.argv[1], seed=0)
trainer = Trainer(net, net.to_device((x, y), "training_data"),
                  net.to_device((x[:1000], y[:1000]), "validation_data"), None,
                  FitOptions(1, SGD(0.03), 0.1, verbose=False, steps_per_call=int(sys.argv[2])))
fn, index, _ = trainer.calls[0]
fn(index)
int(net.evaluation_function(trainer.validation)(np.array(0, dtype=np.int64))[0])
print(imported, time.perf_counter() - start)
"""


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def net_c(
    mbs: int, device: str, backend: str = "jax", seed: int = 0, precision: str | None = None
) -> Network:
    return Network(
        layers_for("relu", mbs), mbs, backend=backend, device=device, seed=seed, precision=precision
    )


def versions() -> str:
    import jax
    import pytensor
    import torch

    return (
        f"python {platform.python_version()}, numpy {np.__version__}, pytensor "
        f"{pytensor.__version__}, jax {jax.__version__}, torch {torch.__version__}"
    )


def compile_seconds(device: str, steps_per_call: int, cache: str) -> tuple[float, float]:
    """(import s, build + first calls s) in a new process whose convnet cache is ``cache``."""
    env = dict(
        os.environ, CONVNET_CACHE=cache, PYTHONPATH=f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"
    )
    out = subprocess.run(
        [sys.executable, "-c", COMPILE_CHILD, device, str(steps_per_call)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    imported, built = out.stdout.split()[-2:]
    return float(imported), float(built)


def step_check(device: str, references: list[str]) -> dict[str, float]:
    """max |weights(device) - weights(reference)| after one SGD step of net C, for each
    precision on ``device`` and each reference backend on the CPU."""
    data = synthetic(10)

    def one_step(dev: str, backend: str, precision: str = "float32") -> list[np.ndarray]:
        net = net_c(10, dev, backend, precision=precision)
        net.SGD(data, 1, 10, 0.03, lmbda=0.1, verbose=False)
        return net.get_weights()

    ours = {precision: one_step(device, "jax", precision) for precision in ("float32", "tf32")}
    diffs = {}
    for backend in references:
        name = f"{backend} on cpu"
        try:
            theirs = one_step("cpu", backend)
        except Exception as exc:  # the C backend needs a compiler and Python headers
            print(f"# step check against {name} skipped: {type(exc).__name__}: {exc}")
            continue
        for precision, weights in ours.items():
            diffs[f"{precision} products vs {name}"] = max(
                float(np.max(np.abs(a - b))) for a, b in zip(weights, theirs, strict=True)
            )
    return diffs


def convnet_pass(
    mbs: int, device: str, data: tuple, conv: str, steps: int, precision: str, seed: int
) -> tuple[float, float, Network, list[np.ndarray]]:
    """Seconds of a timed pass (after a warm-up pass) and the first pass's mean cost."""
    before = os.environ.get("CONVNET_CONV")
    os.environ["CONVNET_CONV"] = conv
    try:
        net = net_c(mbs, device, seed=seed, precision=precision)
    finally:
        if before is None:
            del os.environ["CONVNET_CONV"]
        else:
            os.environ["CONVNET_CONV"] = before
    initial = net.get_weights()
    history = net.SGD(data, 2, mbs, 0.03, lmbda=0.1, verbose=False, steps_per_call=steps)
    return history.seconds[1], history.train_cost[0], net, initial


PARTS = ("compile", "step", "timing", "eval")
PEERS = (
    "PyTorch eager",
    "torch.compile (CUDA graphs on a GPU)",
    "JAX jit step",
    "JAX lax.scan 100",
)
# (conv, steps per call, products) timed at each mini-batch; the last is convnet's default,
# whose mean loss is checked against PyTorch's.
VARIANTS = [
    ("native", 1, "tf32"),
    ("patches", 1, "tf32"),
    ("patches", 100, "float32"),
    ("patches", 100, "tf32"),
]
FAILED_SECTIONS: list[str] = []


def peer_pass(
    peer: str, net: Network, initial: list[np.ndarray], data: tuple, mbs: int, device: str
) -> tuple[float, float]:
    """(seconds, mean training loss) of one timed pass of ``peer`` from ``initial``."""
    torch_device = "cuda" if device == "gpu" else "cpu"
    if peer == "PyTorch eager":
        return torch_run(net, initial, data, mbs, 0.03, 0.1, False, torch_device)
    if peer == "torch.compile (CUDA graphs on a GPU)":  # on a CPU: plain torch.compile
        mode = "reduce-overhead" if device == "gpu" else None
        return torch_run(net, initial, data, mbs, 0.03, 0.1, True, torch_device, mode)
    if peer == "JAX jit step":
        return jax_run(net, initial, data, mbs, 0.03, 0.1, device)
    return jax_scan_run(net, initial, data, mbs, 0.03, 0.1, device, steps=100)


def timing(mbs: int, device: str, images: int, repeats: int) -> bool:
    """Print convnet's variants and the peers at ``mbs``; False where a peer's mean loss
    disagrees with convnet's (default variant), and then no ratio is printed."""
    data = synthetic(images, seed=1)
    ours: dict[tuple[str, int, str], list[float]] = {v: [] for v in VARIANTS}
    theirs: dict[str, list[float]] = {peer: [] for peer in PEERS}
    agree = True
    for repeat in range(repeats):
        for conv, steps, precision in VARIANTS:
            seconds, cost, net, initial = convnet_pass(
                mbs, device, data, conv, steps, precision, seed=repeat
            )
            ours[(conv, steps, precision)].append(seconds)
        for peer in PEERS:
            try:
                seconds, peer_cost = peer_pass(peer, net, initial, data, mbs, device)
            except Exception as exc:  # one broken peer must not cost the others' numbers
                print(f"# {peer} at mini-batch {mbs} failed: {type(exc).__name__}: {exc}")
                continue
            theirs[peer].append(seconds)
            if abs(peer_cost - cost) > 0.02 * abs(cost) + 1e-3:
                agree = False
                print(f"# MISMATCH mbs {mbs}: mean loss {peer} {peer_cost:.5f}, convnet {cost:.5f}")
    peers = {peer: statistics.median(v) for peer, v in theirs.items() if v}
    print(f"\n| net C mini-batch {mbs} | images/s | time / PyTorch eager | time / fastest peer |")
    print("|---|---|---|---|")
    eager = peers.get("PyTorch eager")
    fastest = min(peers.values()) if peers else None
    rows = [
        (f"convnet {c}, {s} steps/call, {p}", statistics.median(v)) for (c, s, p), v in ours.items()
    ]
    rows += [(peer, seconds) for peer, seconds in peers.items()]
    for name, seconds in rows:
        to_eager = f"{seconds / eager:.2f}" if eager and agree else "-"
        to_fastest = f"{seconds / fastest:.2f}" if fastest and agree else "-"
        print(f"| {name} | {images / seconds:,.0f} | {to_eager} | {to_fastest} |")
    if peers:
        print(f"# fastest peer at mini-batch {mbs}: {min(peers, key=peers.get)}")
    return agree


@contextmanager
def section(name: str) -> Iterator[None]:
    """Run one part of the check; a failure is printed and the next part still runs.

    A GPU loan is minutes long: one broken part must not cost the numbers of the others.
    """
    start = time.perf_counter()
    try:
        yield
    except Exception:
        FAILED_SECTIONS.append(name)
        print(f"# {name} FAILED:\n{traceback.format_exc()}")
    print(f"# ({name}: {time.perf_counter() - start:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument(
        "--images", type=int, default=20_480, help="images per timed pass (whole mini-batches)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--references",
        default="jax",
        help="CPU backends for the one-step check: jax and/or c (c compiles for ~30 s)",
    )
    parser.add_argument("--quick", action="store_true", help="2,560 images, 1 repeat")
    parser.add_argument(
        "--parts",
        default=",".join(PARTS),
        help=f"which parts to run (comma-separated): {', '.join(PARTS)}",
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {PARTS}")
    unknown = set(args.references.split(",")) - {"jax", "c"}
    if unknown:
        parser.error(f"--references: unknown {sorted(unknown)}; choose from jax, c")
    if args.quick:
        args.images, args.repeats = 2_560, 1
    print("#", versions())
    if args.device == "gpu":
        smi = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        print("#", smi.stdout.strip())
    print(f"# convnet backend: {net_c(10, args.device).backend.describe()}")

    if "compile" in parts:
        with section("compile"):
            print("\n| compile of net C (train + accuracy, first calls), new process | seconds |")
            print("|---|---|")
            with tempfile.TemporaryDirectory() as cold_1, tempfile.TemporaryDirectory() as cold_100:
                for label, steps, cache in (
                    ("cold, 1 step per call", 1, cold_1),
                    ("warm (same cache), 1 step per call", 1, cold_1),
                    ("cold, 100 steps per call (scan)", 100, cold_100),
                    ("warm (same cache), 100 steps per call", 100, cold_100),
                ):
                    try:
                        imported, built = compile_seconds(args.device, steps, cache)
                        print(f"| {label} | {built:.1f} (import {imported:.1f}) |")
                    except Exception as exc:
                        print(f"| {label} | failed: {exc} |")

    if "step" in parts:
        with section("step check"):
            print("\n| one SGD step of net C, max abs weight difference | value |")
            print("|---|---|")
            for name, diff in step_check(args.device, args.references.split(",")).items():
                print(f"| {args.device} (jax), {name} | {diff:.2e} |")

    ok = True
    for mbs in (10, 256):
        if "timing" in parts:
            with section(f"timing at mini-batch {mbs}"):
                ok &= timing(mbs, args.device, args.images, args.repeats)

    if "eval" in parts:
        with section("evaluation pass"):
            net = net_c(10, args.device)  # evaluation runs in batches of backend.eval_batch
            passes = evaluation_seconds(
                net, net.to_device(synthetic(10_000, seed=2), "test_data"), 5
            )
            print(
                f"\n10,000-image evaluation pass of net C (median of 5): {statistics.median(passes):.3f} s"
            )
    print(json.dumps({"losses_agree": ok, "failed_sections": FAILED_SECTIONS}))
    if not ok:
        print("Results withheld: convnet and PyTorch disagree on the training loss.")
    return 0 if ok and not FAILED_SECTIONS else 1


if __name__ == "__main__":
    sys.exit(main())
