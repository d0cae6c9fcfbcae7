"""convnet's Ops under JAX (PyTensor's JAX linker, on CPUs and GPUs).

``Im2Col`` lowers to the same slicing program as the graph form and ``Col2Im`` to JAX's
exact transpose of it; ``Conv2D`` is ``lax.conv_general_dilated`` (cuDNN on NVIDIA GPUs);
``ConvPool`` calls convnet's own C++ kernel (:mod:`convnet.runtime.kernel`) when it is
built, else it is the im2col formulation in JAX; so does ``DenseSgd`` (:mod:`convnet.dense`),
else it is XLA's products and step. :func:`convnet.runtime.patches.apply` registers them
when a network is built.
"""

from __future__ import annotations

import numpy as np

from convnet import dense as dense_ops
from convnet import ops
from convnet.runtime import kernel

# Networks trained as one program (convnet.lockstep) reach the kernel through ``vmap``:
# it then runs once per network, as it would for networks trained one after another.
ONE_CALL_PER_MEMBER = "sequential"


def register() -> None:
    """Give convnet's Ops their JAX implementations (idempotent; imports JAX)."""
    from jax import lax
    from pytensor.link.jax.dispatch import jax_funcify

    @jax_funcify.register(ops.Conv2D)
    def _conv2d(op, **kwargs):
        def conv(images, filters):
            return lax.conv_general_dilated(images, filters[:, :, ::-1, ::-1], (1, 1), "VALID")

        return conv

    import jax
    import jax.numpy as jnp

    def im2col(images, kh, kw):
        return ops.im2col_columns(images, images.shape[1:], kh, kw, jnp.stack)

    @jax_funcify.register(ops.Im2Col)
    def _im2col(op, **kwargs):
        return lambda images: im2col(images, op.kh, op.kw)

    def convolution(images, filters):
        """(n, f, oh, ow): the im2col formulation, where the kernel is not built."""
        n, _, h, w = images.shape
        f, _, kh, kw = filters.shape
        oh, ow = ops.conv_output_shape((h, w), (kh, kw))
        columns = im2col(images, kh, kw)
        conv = (filters[:, :, ::-1, ::-1].reshape(f, -1) @ columns).reshape(f, n, oh, ow)
        return conv.transpose(1, 0, 2, 3)

    def flipped_weights(filters):
        """(c*kh*kw, fpad): the kernel's layout, filters padded to whole vectors."""
        f = filters.shape[0]
        weights = filters[:, :, ::-1, ::-1].reshape(f, -1).T
        return jnp.pad(weights, ((0, 0), (0, -f % kernel.lanes())))

    def window(kh, kw, ph, pw):
        return {"kh": np.int64(kh), "kw": np.int64(kw), "ph": np.int64(ph), "pw": np.int64(pw)}

    def forward(op, train: bool):
        """ConvPool (the pooled output) or ConvPoolTrain (and where its maxima are)."""
        ph, pw = op.poolsize
        target = kernel.conv_pool_target()

        def with_kernel(images, filters):
            if images.dtype != jnp.float32 or filters.dtype != jnp.float32:
                return without_kernel(images, filters)  # the kernel is float32 only
            n, _, h, w = images.shape
            f, _, kh, kw = filters.shape
            oh, ow = ops.conv_output_shape((h, w), (kh, kw))
            pooled = jax.ShapeDtypeStruct((n, f, oh // ph, ow // pw), images.dtype)
            ties = jax.ShapeDtypeStruct(pooled.shape, jnp.int32)
            call = jax.ffi.ffi_call(
                f"{target}{'_train' if train else ''}",
                (pooled, ties) if train else pooled,
                vmap_method=ONE_CALL_PER_MEMBER,
            )
            return call(images, flipped_weights(filters), **window(kh, kw, ph, pw))

        def without_kernel(images, filters):
            pooled = ops.pool_with_ties(convolution(images, filters), op.poolsize, jnp)
            return pooled if train else pooled[0]

        return with_kernel if target is not None else without_kernel

    jax_funcify.register(ops.ConvPool)(lambda op, **kwargs: forward(op, train=False))
    jax_funcify.register(ops.ConvPoolTrain)(lambda op, **kwargs: forward(op, train=True))

    def dense(ties, grad, conv_hw, poolsize):
        """The pooled gradient spread onto the convolution, as (f, n*oh*ow)."""
        spread = ops.unpool(ties, grad, conv_hw, poolsize, jnp)
        return spread.transpose(1, 0, 2, 3).reshape(grad.shape[1], -1)

    @jax_funcify.register(ops.ConvPoolGradW)
    def _conv_pool_grad_w(op, node=None, **kwargs):
        kh, kw = op.filter_hw
        ph, pw = op.poolsize
        target = kernel.conv_pool_target()

        def with_kernel(images, filters, ties, grad):
            if images.dtype != jnp.float32 or grad.dtype != jnp.float32:
                return without_kernel(images, filters, ties, grad)
            out = jax.ShapeDtypeStruct((grad.shape[1], images.shape[1], kh, kw), images.dtype)
            call = jax.ffi.ffi_call(f"{target}_grad_w", out, vmap_method=ONE_CALL_PER_MEMBER)
            return call(images, ties, grad, **window(kh, kw, ph, pw))

        def without_kernel(images, filters, ties, grad):
            _, c, h, w = images.shape
            f = grad.shape[1]
            conv_hw = ops.conv_output_shape((h, w), (kh, kw))
            dflipped = dense(ties, grad, conv_hw, op.poolsize) @ im2col(images, kh, kw).T
            return dflipped.reshape(f, c, kh, kw)[:, :, ::-1, ::-1]

        return with_kernel if target is not None else without_kernel

    @jax_funcify.register(ops.ConvPoolGradX)
    def _conv_pool_grad_x(op, node=None, **kwargs):
        c, h, w = op.image_shape
        ph, pw = op.poolsize
        target = kernel.conv_pool_target()

        def with_kernel(images, filters, ties, grad):
            if filters.dtype != jnp.float32 or grad.dtype != jnp.float32:
                return without_kernel(images, filters, ties, grad)
            _, _, kh, kw = filters.shape
            out = jax.ShapeDtypeStruct((grad.shape[0], c, h, w), grad.dtype)
            call = jax.ffi.ffi_call(f"{target}_grad_x", out, vmap_method=ONE_CALL_PER_MEMBER)
            return call(filters, ties, grad, **window(kh, kw, ph, pw))

        def without_kernel(images, filters, ties, grad):
            f, _, kh, kw = filters.shape
            conv_hw = ops.conv_output_shape((h, w), (kh, kw))
            dconv = dense(ties, grad, conv_hw, op.poolsize)
            dcolumns = filters[:, :, ::-1, ::-1].reshape(f, -1).T @ dconv
            _, transpose = jax.vjp(lambda x: im2col(x, kh, kw), images)  # linear in x
            return transpose(dcolumns)[0]

        return with_kernel if target is not None else without_kernel

    # A large layer's product at a training mini-batch (dense.MIN_FORWARD_ROWS to
    # MAX_FORWARD_ROWS rows) and its fused backward and SGD step are convnet's kernel where
    # it is built; other batches (evaluation's) and the separate gradients are XLA's GEMMs.
    @jax_funcify.register(dense_ops.Dense)
    def _dense(op, **kwargs):
        target = kernel.dense_target()

        def product(x, w):
            if (
                target is None
                or not dense_ops.MIN_FORWARD_ROWS <= x.shape[0] <= dense_ops.MAX_FORWARD_ROWS
                or x.dtype != jnp.float32
                or w.dtype != jnp.float32
            ):
                return jnp.dot(x, w)
            out = jax.ShapeDtypeStruct((x.shape[0], w.shape[1]), jnp.float32)
            call = jax.ffi.ffi_call(f"{target}_forward", out, vmap_method=ONE_CALL_PER_MEMBER)
            return call(x, w)

        return product

    jax_funcify.register(dense_ops.DenseGradX)(lambda op, **kwargs: lambda g, w: g @ w.T)
    jax_funcify.register(dense_ops.DenseGradW)(lambda op, **kwargs: lambda x, g: x.T @ g)

    @jax_funcify.register(dense_ops.DenseSgd)
    def _dense_sgd(op, **kwargs):
        target = kernel.dense_target()

        def in_jax(w, x, g, eta, decay, *velocity):
            grad = x.T @ g + decay * w
            squares = (jnp.sum(w * w),) if op.squares else ()
            if not velocity:
                return g @ w.T, w - eta * grad, *squares
            v, mu, nesterov = velocity
            moved = mu * v - eta * grad
            stepped = jnp.where(nesterov != 0, w + mu * moved - eta * grad, w + moved)
            return g @ w.T, stepped, moved, *squares

        def with_kernel(w, x, g, *scalars_and_velocity):
            args = [w, x, g, *scalars_and_velocity]
            # Scalars may come as Python floats, which JAX (with 64-bit types on) makes float64.
            args = [jnp.asarray(a, jnp.float32) if jnp.ndim(a) == 0 else a for a in args]
            if any(a.dtype != jnp.float32 for a in args):
                return in_jax(*args)
            weights = jax.ShapeDtypeStruct(w.shape, jnp.float32)
            results = [jax.ShapeDtypeStruct((g.shape[0], w.shape[0]), jnp.float32), weights]
            # w (and the velocity) are stepped in place: inside a loop of steps their buffers
            # are the loop's own, so nothing is copied, and their lines are in the cache.
            aliases = {0: 1}
            if op.momentum:
                results.append(weights)
                aliases[5] = 2
            if op.squares:
                results.append(jax.ShapeDtypeStruct((), jnp.float32))
            call = jax.ffi.ffi_call(
                f"{target}_sgd",
                tuple(results),
                vmap_method=ONE_CALL_PER_MEMBER,
                input_output_aliases=aliases,
            )
            return call(*args)

        return with_kernel if target is not None else in_jax

    jax_funcify.register(dense_ops.SquaredNorm)(lambda op, **kwargs: lambda w: jnp.sum(w * w))

    @jax_funcify.register(ops.Col2Im)
    def _col2im(op, **kwargs):
        def col2im(columns, images):
            _, transpose = jax.vjp(lambda x: im2col(x, op.kh, op.kw), images)
            return transpose(columns)[0]

        return col2im
