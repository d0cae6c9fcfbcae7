"""Several networks of one architecture trained as one program: an ensemble's members.

Each parameter of the members is one stacked array (members first), and a training step
is the one-network step graph vectorized over that leading axis (PyTensor's
``vectorize_graph``): one batched GEMM per dense layer, each member with its own weights,
its own dropout masks (its seed is an input of the graph, not a constant) and its own
mini-batch order. Member k's weights after any number of steps are the ones it would
have trained alone, to float32 rounding (the arithmetic is the same, the GEMMs batched).

What it is for: on a GPU a step at mini-batch 10 costs kernel launches, not flops, so N
members in one program should cost little more than one (not yet measured there). On a
CPU core the arithmetic and the weights' traffic are the same however the members are
batched, and the batched forms measured slower (RESULTS.md, "An ensemble as one program").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import clone_replace, vectorize_graph

from convnet.errors import ArgumentError
from convnet.model import Model

if TYPE_CHECKING:
    from convnet.model import DeviceData
    from convnet.optimizers import Optimizer


def check_alike(nets: Sequence[Model]) -> None:
    """Raise ArgumentError, naming the first that differs, unless every network has the
    first one's layers, mini-batch size and backend (what one program needs)."""
    if isinstance(nets, Model) or not isinstance(nets, Sequence):
        raise ArgumentError(f"nets: expected a list of networks. Received: {nets!r}.")
    if len(nets) < 1:
        raise ArgumentError("nets: expected at least one network. Received: none.")
    for index, net in enumerate(nets):
        if not isinstance(net, Model):
            raise ArgumentError(f"nets[{index}]: expected a convnet Network. Received: {net!r}.")
    first = nets[0]
    want = ([layer.describe() for layer in first.layers], first.mini_batch_size)
    for index, net in enumerate(nets[1:], 1):
        have = ([layer.describe() for layer in net.layers], net.mini_batch_size)
        if have != want:
            raise ArgumentError(
                f"nets[{index}]: networks trained as one program need the same layers and "
                f"mini_batch_size as nets[0]. Expected: {want}. Received: {have}."
            )
        if (net.backend.name, net.backend.device) != (first.backend.name, first.backend.device):
            raise ArgumentError(
                f"nets[{index}]: backend {net.backend.describe()} differs from nets[0]'s "
                f"{first.backend.describe()}; networks trained as one program share one."
            )
        if any(net is other for other in nets[:index]):
            raise ArgumentError(f"nets[{index}]: the same network appears twice.")


class Lockstep:
    """The members' parameters stacked (members first) on the backend's device, and the
    compiled functions that train them all at once."""

    def __init__(self, nets: Sequence[Model]) -> None:
        check_alike(nets)
        self.nets = list(nets)
        self.template = nets[0]
        self.backend = self.template.backend
        self.params = [
            self.stacked(self._weights(k), f"{p.name}[members]")
            for k, p in enumerate(self.template.params)
        ]
        self.seeds = self.stacked([np.uint64(net.seed & 0xFFFFFFFF) for net in self.nets], "seeds")

    @property
    def size(self) -> int:
        return len(self.nets)

    def _weights(self, k: int) -> list[np.ndarray]:
        """Every member's parameter ``k`` (its host value, as the user sees it)."""
        return [np.asarray(net.params[k].get_value(borrow=True)) for net in self.nets]

    def stacked(self, values: Sequence[Any], name: str) -> SharedVariable:
        """A shared variable on the device holding one value per member."""
        return self.backend.shared(np.stack([np.asarray(v) for v in values]), name)

    def set_stacked(self, variable: SharedVariable, values: Sequence[Any]) -> None:
        """``variable`` (made by :meth:`stacked`) holds ``values`` now, on the device."""
        variable.set_value(np.stack([np.asarray(v) for v in values]))
        self.backend.place(variable)

    def push(self) -> None:
        """The members' current weights (host values) into the stacked parameters."""
        for k, stacked in enumerate(self.params):
            self.set_stacked(stacked, self._weights(k))

    def member_weights(self, member: int) -> list[np.ndarray]:
        """Member ``member``'s parameters, in ``params`` order."""
        return [np.array(np.asarray(p.get_value(borrow=True))[member]) for p in self.params]

    def train_function(
        self,
        data: DeviceData,
        orders: SharedVariable,
        etas: SharedVariable,
        lmbda: float,
        cost_sums: SharedVariable,
        step: SharedVariable,
        optimizer: Optimizer,
        optimizer_state: Sequence[SharedVariable] = (),
    ) -> Any:
        """One optimizer step of every member on mini-batch ``i`` of its row of ``orders``;
        each member's cost added to its entry of ``cost_sums``.

        The stacked arguments (``orders``, ``etas``, ``cost_sums``, ``optimizer_state``)
        hold one entry per member, members first; ``step`` (the dropout masks' counter)
        is the same for all. The step is :meth:`Model.train_function`'s, whole
        mini-batches (no micro-batches).
        """
        net, mbs, n = self.template, self.template.mini_batch_size, self.size
        # One member's step, on placeholders...
        x = pt.matrix("x", dtype="float32", shape=(mbs, net.n_in))
        y = pt.vector("y", dtype="int32", shape=(mbs,))
        seed = pt.scalar("seed", dtype="uint64")
        eta = pt.scalar("eta", dtype="float32")
        count = pt.scalar("count", dtype="int64")
        state = [
            pt.tensor(f"s{k}", dtype="float32", shape=v.type.shape[1:])
            for k, v in enumerate(optimizer_state)
        ]
        cost = net.training_cost(x, y, mbs, seed=seed, step=count) + net.l2_cost(lmbda, data.n)
        grads = pt.grad(cost, net.params)
        new_params, new_state = optimizer.step(net.params, grads, state, eta)
        # ... vectorized over the members.
        xs = pt.tensor("xs", dtype="float32", shape=(n, mbs, net.n_in))
        ys = pt.tensor("ys", dtype="int32", shape=(n, mbs))
        params = [pt.tensor(p.name, dtype="float32", shape=p.type.shape) for p in self.params]
        states = [pt.tensor(v.name, dtype="float32", shape=v.type.shape) for v in optimizer_state]
        seeds = pt.vector("seeds", dtype="uint64", shape=(n,))
        etas_in = pt.vector("etas", dtype="float32", shape=(n,))
        one = {x: xs, y: ys, seed: seeds, eta: etas_in}
        one |= dict(zip(net.params, params, strict=True)) | dict(zip(state, states, strict=True))
        costs, *after = vectorize_graph([cost, *new_params, *new_state], replace=one)

        i = pt.scalar("i", dtype="int64")
        rows = orders[:, i * mbs + pt.arange(mbs)]
        values = {
            xs: pt.specify_shape(data.x[rows], (n, mbs, net.n_in)),
            ys: pt.specify_shape(data.y[rows], (n, mbs)),
            seeds: self.seeds,
            etas_in: etas,
            count: step,
        }
        values |= dict(zip(params, self.params, strict=True))
        values |= dict(zip(states, optimizer_state, strict=True))
        step_costs, *moved = clone_replace([costs, *after], values)
        carried = [*self.params, *optimizer_state, step, cost_sums]
        result = [*moved, step + 1, cost_sums + step_costs]
        fn = pytensor.function(
            [i], [], mode=self.backend.mode, updates=list(zip(carried, result, strict=True))
        )
        fn.trust_input = True
        return self.backend.wrap(fn)
