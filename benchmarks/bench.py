#!/usr/bin/env python
"""convnet vs PyTorch (eager and torch.compile) on the book's nets A, B, C, side by side.

Same architecture, same initial weights (copied from convnet), same mini-batches in the
same order, one thread each, frameworks alternated within each repeat; medians reported.
A run counts only if convnet's and PyTorch's mean training losses agree (same math, same
data), so a fast but wrong result is never reported.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench.py --quick
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

# One thread for every framework: measured here, it was each peer's best at mini-batch 10.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from convnet import Network, load_mnist
from convnet.book import layers_for
from convnet.layers import ConvPoolLayer, SoftmaxLayer

NETS = {"A": ("shallow", 0.1, 0.0), "B": ("conv", 0.1, 0.0), "C": ("relu", 0.03, 0.1)}
EPOCH_IMAGES = 50_000


def convnet_run(name, eta, lmbda, data, mbs, seed):
    """Seconds for one pass over ``data`` (after a warm-up pass) and the mean cost."""
    net = Network(layers_for(name, mbs), mbs, seed=seed)
    initial = [np.asarray(p.get_value()).copy() for p in net.params]
    history = net.SGD(data, 2, mbs, eta, lmbda=lmbda, verbose=False)
    return history.seconds[1], history.train_cost[0], initial, net


def torch_model(net, initial):
    import torch
    from torch import nn

    acts = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "linear": lambda z: z}
    params = iter(initial)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = nn.ModuleList()
            self.kinds = []
            for layer in net.layers:
                w, b = next(params), next(params)
                if isinstance(layer, ConvPoolLayer):
                    m = nn.Conv2d(
                        layer.filter_shape[1], layer.filter_shape[0], layer.filter_shape[2:]
                    )
                    m.weight.data = torch.from_numpy(np.ascontiguousarray(w[:, :, ::-1, ::-1]))
                    self.kinds.append(("conv", layer))
                else:
                    m = nn.Linear(layer.n_in, layer.n_out)
                    m.weight.data = torch.from_numpy(np.ascontiguousarray(w.T))
                    kind = "softmax" if isinstance(layer, SoftmaxLayer) else "fc"
                    self.kinds.append((kind, layer))
                m.bias.data = torch.from_numpy(b.copy())
                self.steps.append(m)

        def forward(self, x):
            for m, (kind, layer) in zip(self.steps, self.kinds, strict=True):
                if kind == "conv":
                    x = x.reshape(-1, *layer.input_shape)
                    conv = torch.nn.functional.conv2d(x, m.weight)
                    pooled = torch.nn.functional.max_pool2d(conv, layer.poolsize)
                    x = acts[_act(layer)](pooled + m.bias.view(1, -1, 1, 1))
                elif kind == "fc":
                    x = acts[_act(layer)](m(x.reshape(x.shape[0], -1)))
                else:
                    x = m(x)
            return x

    return Model()


def _act(layer):
    return layer.describe()["activation_fn"]


def torch_run(net, initial, data, mbs, eta, lmbda, compiled):
    import torch

    torch.set_num_threads(1)
    model = torch_model(net, initial)
    weights = [m.weight for m in model.steps]
    biases = [m.bias for m in model.steps]
    n_batches = len(data[0]) // mbs
    opt = torch.optim.SGD([*weights, *biases], lr=eta)
    l2_scale = 0.5 * lmbda / n_batches
    x_all = torch.from_numpy(data[0])
    y_all = torch.from_numpy(data[1].astype(np.int64))

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        # network3's cost: log-likelihood + 0.5*lmbda*sum(w**2)/num_batches, as convnet.
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if l2_scale:
            loss = loss + l2_scale * sum((w * w).sum() for w in weights)
        loss.backward()
        opt.step()
        return loss.detach()

    if compiled:
        torch._dynamo.reset()  # a fresh model per repeat would otherwise hit the recompile limit
    run = torch.compile(step) if compiled else step
    run(x_all[:mbs], y_all[:mbs])  # warm-up (compiles under torch.compile)
    model2 = torch_model(net, initial)  # restart from the same weights after warm-up
    for a, b in zip(model.steps, model2.steps, strict=True):
        a.weight.data.copy_(b.weight.data)
        a.bias.data.copy_(b.bias.data)
    losses = []
    start = time.perf_counter()
    for i in range(n_batches):
        losses.append(run(x_all[i * mbs : (i + 1) * mbs], y_all[i * mbs : (i + 1) * mbs]))
    seconds = time.perf_counter() - start
    return seconds, float(torch.stack(losses).mean())


def jax_run(net, initial, data, mbs, eta, lmbda):
    """Hand-written JAX: one jitted SGD step per call, data and weights on the device."""
    import jax
    import jax.numpy as jnp

    acts = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "linear": lambda z: z}
    n_batches = len(data[0]) // mbs
    params = []
    for layer, (w, b) in zip(
        net.layers, zip(initial[::2], initial[1::2], strict=True), strict=True
    ):
        if isinstance(layer, ConvPoolLayer):
            w = w[:, :, ::-1, ::-1]  # lax convolves without flipping; convnet flips
        params.append((jnp.asarray(np.ascontiguousarray(w)), jnp.asarray(b)))

    def forward(params, x):
        for layer, (w, b) in zip(net.layers, params, strict=True):
            if isinstance(layer, ConvPoolLayer):
                x = x.reshape(-1, *layer.input_shape)
                conv = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID")
                ph, pw = layer.poolsize
                pooled = jax.lax.reduce_window(
                    conv, -jnp.inf, jax.lax.max, (1, 1, ph, pw), (1, 1, ph, pw), "VALID"
                )
                x = acts[_act(layer)](pooled + b[None, :, None, None])
            elif isinstance(layer, SoftmaxLayer):
                x = x.reshape(x.shape[0], -1) @ w + b
            else:
                x = acts[_act(layer)](x.reshape(x.shape[0], -1) @ w + b)
        return x

    def cost(params, x, y):
        logp = jax.nn.log_softmax(forward(params, x))
        l2 = sum((w * w).sum() for w, _ in params)
        return -logp[jnp.arange(mbs), y].mean() + 0.5 * lmbda / n_batches * l2

    x_all, y_all = jnp.asarray(data[0]), jnp.asarray(data[1])

    @jax.jit
    def step(params, i, x_all, y_all):
        # Data passed as arguments: captured arrays would be baked into the program.
        x = jax.lax.dynamic_slice_in_dim(x_all, i * mbs, mbs)
        y = jax.lax.dynamic_slice_in_dim(y_all, i * mbs, mbs)
        loss, grads = jax.value_and_grad(cost)(params, x, y)
        return jax.tree.map(lambda p, g: p - eta * g, params, grads), loss

    jax.block_until_ready(step(params, 0, x_all, y_all))  # compile
    losses = []
    start = time.perf_counter()
    for i in range(n_batches):
        params, loss = step(params, i, x_all, y_all)
        losses.append(loss)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    return seconds, float(jnp.stack(losses).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nets", default="A,B,C")
    parser.add_argument("--mbs", type=int, default=10)
    parser.add_argument("--images", type=int, default=EPOCH_IMAGES, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", default="torch,torch-compile,jax")
    parser.add_argument(
        "--quick", action="store_true", help="5,000 images, 1 repeat, eager peer only"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats, args.peers = 5_000, 1, "torch,jax"
    peers = [p for p in args.peers.split(",") if p]

    import torch
    from threadpoolctl import threadpool_info

    (train_x, train_y), _, _ = load_mnist()
    data = (train_x[: args.images], train_y[: args.images])
    scale = EPOCH_IMAGES / args.images
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
        f"torch {torch.__version__}, mini-batch {args.mbs}, {args.images} images per pass, {args.repeats} repeats"
    )
    print(
        "# BLAS:",
        ", ".join(
            f"{i['internal_api']} {i.get('architecture')} threads={i['num_threads']}"
            for i in threadpool_info()
        ),
    )
    print("| net | framework | s/epoch (median) | images/s | ratio to convnet |")
    print("|---|---|---|---|---|")
    ok = True
    for key in args.nets.split(","):
        name, eta, lmbda = NETS[key]
        times = {f: [] for f in ["convnet", *peers]}
        for repeat in range(args.repeats):
            seconds, cost, initial, net = convnet_run(name, eta, lmbda, data, args.mbs, seed=repeat)
            times["convnet"].append(seconds * scale)
            for peer in peers:
                t_seconds, t_cost = torch_run(
                    net, initial, data, args.mbs, eta, lmbda, peer == "torch-compile"
                )
                times[peer].append(t_seconds * scale)
                if abs(t_cost - cost) > 0.02 * abs(cost) + 1e-3:
                    ok = False
                    print(
                        f"# MISMATCH {key} {peer}: mean loss {t_cost:.5f} vs convnet {cost:.5f}",
                        file=sys.stderr,
                    )
        base = statistics.median(times["convnet"])
        for framework, values in times.items():
            med = statistics.median(values)
            print(
                f"| {key} | {framework} | {med:.2f} | {EPOCH_IMAGES / med:,.0f} | {med / base:.2f} |"
            )
        fastest = min(statistics.median(times[p]) for p in peers)
        print(f"| {key} | **convnet / fastest peer** | **{base / fastest:.2f}** | | |")
    if not ok:
        print(
            "Results withheld: convnet and PyTorch disagree on the training loss.", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
