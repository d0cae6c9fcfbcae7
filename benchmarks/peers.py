"""The peers convnet is measured against: PyTorch (eager, torch.compile, torch.compile with
CUDA graphs) and hand-written JAX (one jitted step per call, or ``lax.scan`` over many).

Each builds the same network as a convnet ``Network`` from the same initial weights (conv
kernels flipped: convnet convolves, PyTorch and lax correlate), trains it on the same
mini-batches in the same order with network3's cost (log-likelihood + L2 on weights), and
returns (seconds, mean training loss) so the harness can check the math agrees. A layer
with ``p_dropout`` zeroes each of its inputs with that probability while training, without
rescaling (network3's dropout; the masks are each framework's own draws).
"""

from __future__ import annotations

import time

import numpy as np

from convnet.layers import ConvPoolLayer, SoftmaxLayer


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
                    x = acts[_act(layer)](m(_torch_drop(x.reshape(x.shape[0], -1), layer)))
                else:
                    x = m(_torch_drop(x, layer))
            return x

    return Model()


def _torch_drop(x, layer):
    import torch

    p = getattr(layer, "p_dropout", 0.0)
    return x * (torch.rand_like(x) >= p).to(x.dtype) if p else x


def _act(layer):
    return layer.describe()["activation_fn"]


def torch_run(net, initial, data, mbs, eta, lmbda, compiled, device="cpu", mode=None):
    """Train one pass; on "cuda" data and weights live on the GPU and timing synchronises.

    ``mode`` is torch.compile's: "reduce-overhead" records CUDA graphs, what a GPU user
    picks for small steps. A graph's outputs are overwritten by its next replay, so each
    step's loss is copied out before the next one runs."""
    import torch

    if device == "cpu":
        torch.set_num_threads(1)
    model = torch_model(net, initial).to(device)
    weights = [m.weight for m in model.steps]
    biases = [m.bias for m in model.steps]
    n_batches = len(data[0]) // mbs
    opt = torch.optim.SGD([*weights, *biases], lr=eta)
    l2_scale = 0.5 * lmbda / n_batches
    x_all = torch.from_numpy(data[0]).to(device)
    y_all = torch.from_numpy(data[1].astype(np.int64)).to(device)

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
    run = torch.compile(step, mode=mode) if compiled else step
    graphs = compiled and mode == "reduce-overhead"

    def call(x, y):
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
            return run(x, y).clone()
        return run(x, y)

    for _ in range(3 if graphs else 1):  # warm-up: compiles; CUDA graphs record on a later call
        call(x_all[:mbs], y_all[:mbs])
    model2 = torch_model(net, initial).to(device)  # restart from the same weights
    for a, b in zip(model.steps, model2.steps, strict=True):
        a.weight.data.copy_(b.weight.data)
        a.bias.data.copy_(b.bias.data)
    losses = []
    if device != "cpu":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(n_batches):
        losses.append(call(x_all[i * mbs : (i + 1) * mbs], y_all[i * mbs : (i + 1) * mbs]))
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return seconds, float(torch.stack(losses).mean())


def _jax_model(net, initial, mbs, lmbda, n_batches):
    """(params, cost(params, x, y, key)) of ``net`` in plain JAX, from convnet's weights
    (``key``: the step's dropout masks)."""
    import jax
    import jax.numpy as jnp

    acts = {"relu": jax.nn.relu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh, "linear": lambda z: z}
    params = []
    for layer, (w, b) in zip(
        net.layers, zip(initial[::2], initial[1::2], strict=True), strict=True
    ):
        if isinstance(layer, ConvPoolLayer):
            w = w[:, :, ::-1, ::-1]  # lax convolves without flipping; convnet flips
        params.append((jnp.asarray(np.ascontiguousarray(w)), jnp.asarray(b)))

    def drop(x, layer, key):
        p = getattr(layer, "p_dropout", 0.0)
        return x * (jax.random.uniform(key, x.shape) >= p).astype(x.dtype) if p else x

    def forward(params, x, key):
        keys = jax.random.split(key, len(net.layers))
        for layer, (w, b), k in zip(net.layers, params, keys, strict=True):
            if isinstance(layer, ConvPoolLayer):
                x = x.reshape(-1, *layer.input_shape)
                conv = jax.lax.conv_general_dilated(x, w, (1, 1), "VALID")
                ph, pw = layer.poolsize
                pooled = jax.lax.reduce_window(
                    conv, -jnp.inf, jax.lax.max, (1, 1, ph, pw), (1, 1, ph, pw), "VALID"
                )
                x = acts[_act(layer)](pooled + b[None, :, None, None])
            elif isinstance(layer, SoftmaxLayer):
                x = drop(x.reshape(x.shape[0], -1), layer, k) @ w + b
            else:
                x = acts[_act(layer)](drop(x.reshape(x.shape[0], -1), layer, k) @ w + b)
        return x

    def cost(params, x, y, key):
        logp = jax.nn.log_softmax(forward(params, x, key))
        l2 = sum((w * w).sum() for w, _ in params)
        return -logp[jnp.arange(mbs), y].mean() + 0.5 * lmbda / n_batches * l2

    return params, cost


KEY_SEED = 0  # the JAX peers' dropout masks


def _jax_device(device):
    import jax

    return jax.default_device(jax.devices("gpu" if device in ("gpu", "cuda") else "cpu")[0])


def jax_run(net, initial, data, mbs, eta, lmbda, device="cpu"):
    """Hand-written JAX: one jitted SGD step per call, data and weights on the device."""
    import jax
    import jax.numpy as jnp

    n_batches = len(data[0]) // mbs
    with _jax_device(device):
        params, cost = _jax_model(net, initial, mbs, lmbda, n_batches)
        x_all, y_all = jnp.asarray(data[0]), jnp.asarray(data[1])

        @jax.jit
        def step(params, i, x_all, y_all):
            # Data passed as arguments: captured arrays would be baked into the program.
            x = jax.lax.dynamic_slice_in_dim(x_all, i * mbs, mbs)
            y = jax.lax.dynamic_slice_in_dim(y_all, i * mbs, mbs)
            loss, grads = jax.value_and_grad(cost)(
                params, x, y, jax.random.fold_in(jax.random.key(KEY_SEED), i)
            )
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


def jax_scan_run(net, initial, data, mbs, eta, lmbda, device="cpu", steps=100):
    """Hand-written JAX as a GPU user tunes it: ``lax.scan`` over ``steps`` SGD steps per
    call (and one shorter call for the remainder), so the host launches once per chunk."""
    import jax
    import jax.numpy as jnp

    n_batches = len(data[0]) // mbs
    steps = min(steps, n_batches)
    with _jax_device(device):
        params, cost = _jax_model(net, initial, mbs, lmbda, n_batches)
        x_all, y_all = jnp.asarray(data[0]), jnp.asarray(data[1])

        def chunk(params, first, x_all, y_all, count):
            def one(params, i):
                x = jax.lax.dynamic_slice_in_dim(x_all, i * mbs, mbs)
                y = jax.lax.dynamic_slice_in_dim(y_all, i * mbs, mbs)
                loss, grads = jax.value_and_grad(cost)(
                    params, x, y, jax.random.fold_in(jax.random.key(KEY_SEED), i)
                )
                return jax.tree.map(lambda p, g: p - eta * g, params, grads), loss

            return jax.lax.scan(one, params, first + jnp.arange(count))

        run = jax.jit(chunk, static_argnums=4)
        calls = [(first, steps) for first in range(0, n_batches - steps + 1, steps)]
        if n_batches % steps:
            calls.append((n_batches - n_batches % steps, n_batches % steps))
        for count in {count for _, count in calls}:  # compile each length once
            jax.block_until_ready(run(params, 0, x_all, y_all, count))
        losses = []
        start = time.perf_counter()
        for first, count in calls:
            params, chunk_losses = run(params, first, x_all, y_all, count)
            losses.append(chunk_losses)
        jax.block_until_ready(params)
        seconds = time.perf_counter() - start
        return seconds, float(jnp.concatenate(losses).mean())
