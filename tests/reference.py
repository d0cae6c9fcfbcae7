"""Independent NumPy references: the book's network.py backprop, vectorised over the
mini-batch, and a loop-based conv/pool net. No convnet or PyTensor code is used here."""

from __future__ import annotations

import numpy as np
from scipy.signal import convolve2d, correlate2d


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def conv_valid(x, w):
    """True 2-D convolution, summed over channels: x (N,C,H,W), w (F,C,kh,kw)."""
    n, c = x.shape[:2]
    f = w.shape[0]
    out = np.zeros((n, f, x.shape[2] - w.shape[2] + 1, x.shape[3] - w.shape[3] + 1))
    for i in range(n):
        for j in range(f):
            out[i, j] = sum(convolve2d(x[i, k], w[j, k], mode="valid") for k in range(c))
    return out


def max_pool(x, p):
    n, c, h, w = x.shape
    out = np.zeros((n, c, h // p[0], w // p[1]))
    for a in range(h // p[0]):
        for b in range(w // p[1]):
            window = x[:, :, a * p[0] : (a + 1) * p[0], b * p[1] : (b + 1) * p[1]]
            out[:, :, a, b] = window.max(axis=(2, 3))
    return out


def max_pool_backward(x, p, grad_out):
    """Route each window's gradient to its (first) maximum, as a loop."""
    grad = np.zeros_like(x)
    n, c, h, w = x.shape
    for i in range(n):
        for k in range(c):
            for a in range(h // p[0]):
                for b in range(w // p[1]):
                    window = x[i, k, a * p[0] : (a + 1) * p[0], b * p[1] : (b + 1) * p[1]]
                    r, s = np.unravel_index(np.argmax(window), window.shape)
                    grad[i, k, a * p[0] + r, b * p[1] + s] += grad_out[i, k, a, b]
    return grad


def fc_softmax_sgd_step(x, y, w1, b1, w2, b2, eta, lmbda, num_batches):
    """One SGD step of sigmoid FC + softmax, log-likelihood cost, L2 on weights."""
    m = len(x)
    z1 = x @ w1 + b1
    a1 = sigmoid(z1)
    p = softmax(a1 @ w2 + b2)
    delta2 = p.copy()
    delta2[np.arange(m), y] -= 1.0
    delta2 /= m
    delta1 = (delta2 @ w2.T) * a1 * (1 - a1)
    reg = lmbda / num_batches
    return (
        w1 - eta * (x.T @ delta1 + reg * w1),
        b1 - eta * delta1.sum(0),
        w2 - eta * (a1.T @ delta2 + reg * w2),
        b2 - eta * delta2.sum(0),
    )


def convpool_softmax_sgd_step(x, y, wc, bc, ws, bs, poolsize, eta, lmbda, num_batches):
    """One SGD step of ReLU(max_pool(conv(x)) + b) -> softmax; x is (N, C, H, W)."""
    m = len(x)
    conv = conv_valid(x, wc)
    pooled = max_pool(conv, poolsize)
    pre = pooled + bc[None, :, None, None]
    act = np.maximum(pre, 0.0)
    flat = act.reshape(m, -1)
    p = softmax(flat @ ws + bs)
    delta_s = p.copy()
    delta_s[np.arange(m), y] -= 1.0
    delta_s /= m
    delta_act = (delta_s @ ws.T).reshape(act.shape) * (pre > 0)
    delta_conv = max_pool_backward(conv, poolsize, delta_act)
    grad_wc = np.zeros_like(wc)
    for f in range(wc.shape[0]):
        for c in range(wc.shape[1]):
            flipped = sum(correlate2d(x[i, c], delta_conv[i, f], mode="valid") for i in range(m))
            grad_wc[f, c] = flipped[::-1, ::-1]
    reg = lmbda / num_batches
    return (
        wc - eta * (grad_wc + reg * wc),
        bc - eta * delta_act.sum(axis=(0, 2, 3)),
        ws - eta * (flat.T @ delta_s + reg * ws),
        bs - eta * delta_s.sum(0),
    )


def conv_pool_backward(x, w, p, grad_out):
    """Gradients (dx, dw) of sum(max_pool(conv_valid(x, w)) * grad_out), as loops: every
    place of a window that holds its maximum gets the window's gradient (Theano's pooling,
    the book's, did the same)."""
    conv = conv_valid(x, w)
    dconv = np.zeros_like(conv)
    h, wd = conv.shape[2:]
    for a in range(h // p[0]):
        for b in range(wd // p[1]):
            rows, cols = slice(a * p[0], (a + 1) * p[0]), slice(b * p[1], (b + 1) * p[1])
            window = conv[:, :, rows, cols]
            tied = window == window.max(axis=(2, 3), keepdims=True)
            dconv[:, :, rows, cols] += tied * grad_out[:, :, a, b][:, :, None, None]
    kh, kw = w.shape[2:]
    flipped = w[:, :, ::-1, ::-1]  # conv_valid is a true convolution
    dx, dflipped = np.zeros_like(x, dtype=np.float64), np.zeros_like(w, dtype=np.float64)
    for y in range(h):
        for z in range(wd):
            patch = x[:, :, y : y + kh, z : z + kw]
            g = dconv[:, :, y, z]
            dflipped += np.einsum("nf,ncab->fcab", g, patch)
            dx[:, :, y : y + kh, z : z + kw] += np.einsum("nf,fcab->ncab", g, flipped)
    return dx, dflipped[:, :, ::-1, ::-1]


def seed_backprop(weights, biases, x, y, quadratic):
    """The gradient of one example's cost by the seed's algorithm (chapter 2's four
    equations), layer by layer on column vectors: ``(nabla_b, nabla_w)``."""
    activations, zs = [x], []
    for w, b in zip(weights, biases, strict=True):
        zs.append(w @ activations[-1] + b)
        activations.append(sigmoid(zs[-1]))
    out = activations[-1]
    delta = (out - y) * out * (1 - out) if quadratic else out - y
    nabla_b, nabla_w = [delta], [delta @ activations[-2].T]
    for layer in range(len(weights) - 2, -1, -1):
        s = activations[layer + 1]
        delta = (weights[layer + 1].T @ delta) * s * (1 - s)
        nabla_b.insert(0, delta)
        nabla_w.insert(0, delta @ activations[layer].T)
    return nabla_b, nabla_w


def seed_sgd_step(weights, biases, batch, eta, lmbda, n, quadratic):
    """One mini-batch step as the seed takes it: per-example gradients summed, then
    ``w <- (1 - eta lmbda / n) w - eta / m sum(nabla_w)``."""
    sum_b = [np.zeros_like(b) for b in biases]
    sum_w = [np.zeros_like(w) for w in weights]
    for x, y in batch:
        nb, nw = seed_backprop(weights, biases, x, y, quadratic)
        sum_b = [s + d for s, d in zip(sum_b, nb, strict=True)]
        sum_w = [s + d for s, d in zip(sum_w, nw, strict=True)]
    m = len(batch)
    new_w = [(1 - eta * lmbda / n) * w - eta / m * s for w, s in zip(weights, sum_w, strict=True)]
    new_b = [b - eta / m * s for b, s in zip(biases, sum_b, strict=True)]
    return new_w, new_b
