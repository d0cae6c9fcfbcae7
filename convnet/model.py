"""The model: a chain of layers checked to fit, its weights (numpy for users, device twins
for convnet), and the compiled functions that train and evaluate it on its backend.

The book's :class:`~convnet.network.Network` is this plus training (``fit``, ``SGD``) and
saving; the trainer and the optimizers only see a model.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pytensor
import pytensor.tensor as pt
from pytensor.compile.executor import Function
from pytensor.compile.sharedvalue import SharedVariable
from pytensor.graph.replace import clone_replace
from pytensor.tensor.variable import TensorVariable

from convnet import dense
from convnet.data import arrays
from convnet.data.arrays import as_arrays
from convnet.errors import ArgumentError, ShapeError, check_number
from convnet.layers import ConvPoolLayer, DropoutSource, FullyConnectedLayer, Layer, SoftmaxLayer
from convnet.runtime import backend as backends

if TYPE_CHECKING:
    from convnet.optimizers import Optimizer

DATASETS_KEPT = 4  # evaluation datasets a network keeps on its device (least recent go)


@dataclass
class DeviceData:
    """A dataset held in shared variables on the backend's device, with the compiled
    function that evaluates a network on it (made at first use)."""

    x: SharedVariable
    y: SharedVariable
    n: int
    evaluate: Function | None = None


def _fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """Identifies a dataset by its contents: the same arrays, or equal ones, give the same."""
    digest = hashlib.blake2b(digest_size=16)
    for array in (x, y):
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).data.cast("B"))
    return digest.hexdigest()


def _label(index: int, layer: Layer) -> str:
    return f"layer {index} ({layer.name})"


def check_chain(layers: Sequence[Layer], mini_batch_size: int) -> None:
    """Raise ShapeError, naming both layers and sizes, where a layer can't take its input."""
    for index, layer in enumerate(layers):
        if isinstance(layer, ConvPoolLayer) and layer.image_shape[0] != mini_batch_size:
            raise ShapeError(
                f"{_label(index, layer)}: image_shape[0] must equal the network's "
                f"mini_batch_size: expected {mini_batch_size}. Received: "
                f"image_shape={layer.image_shape}."
            )
    for index in range(1, len(layers)):
        before, after = layers[index - 1], layers[index]
        fits = before.n_out == after.n_in
        if isinstance(before, ConvPoolLayer) and isinstance(after, ConvPoolLayer):
            fits = before.output_shape == after.input_shape
        if not fits:
            raise ShapeError(
                f"{_label(index - 1, before)} outputs {before.output_shape} "
                f"({before.n_out} values per example) but {_label(index, after)} expects "
                f"{after.input_shape} ({after.n_in} values)."
            )


def _claim_all(layers: Sequence[Layer], network: Model) -> None:
    """Make ``network`` the owner of ``layers``, refusing any layer another network uses.

    A layer holds its weights and the graphs built on them, so two networks built from the
    same layer objects would train one set of weights (the second one's graphs used to
    fail in PyTensor with a ``MissingInputError``)."""
    seen: set[int] = set()
    for index, layer in enumerate(layers):
        owner = layer.network() if layer.network is not None else None
        if owner is not None and owner is not network:
            raise ArgumentError(
                f"layers[{index}] ({layer.name}): this layer already belongs to another "
                "Network; a layer holds that network's weights. Build new layers for each "
                "network (a function that returns the list, as convnet.book.layers_for does)."
            )
        if id(layer) in seen:
            raise ArgumentError(
                f"layers[{index}] ({layer.name}): the same layer object appears twice in layers."
            )
        seen.add(id(layer))
    for layer in layers:
        layer.network = weakref.ref(network)


class Model:
    """Layers, weights and compiled functions; its arguments are
    :class:`~convnet.network.Network`'s."""

    def __init__(
        self,
        layers: Sequence[Layer],
        mini_batch_size: int,
        *,
        backend: str | None = None,
        device: str | None = None,
        seed: int | None = None,
        precision: str | None = None,
    ) -> None:
        self.layers = list(layers)
        if not self.layers:
            raise ArgumentError("layers: expected at least one layer. Received: [].")
        for index, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{index}]: expected a convnet layer. Received: {layer!r}.")
        if not isinstance(self.layers[-1], SoftmaxLayer):
            raise ArgumentError(
                f"layers: the last layer must be a SoftmaxLayer (it defines the cost). "
                f"Received: {type(self.layers[-1]).__name__}."
            )
        check_number(mini_batch_size, "mini_batch_size", integer=True)
        self.mini_batch_size = int(mini_batch_size)
        check_chain(self.layers, self.mini_batch_size)
        self.backend = backends.resolve(backend, device, precision)
        _claim_all(self.layers, self)  # after every check: a refused network claims nothing
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        else:
            rng = np.random.default_rng(seed)
            for layer in self.layers:
                layer.initialize(rng)
        self.seed = int(seed)
        self.params = [p for layer in self.layers for p in layer.params]
        self.x = pt.matrix("x", dtype="float32")
        self.y = pt.vector("y", dtype="int32")
        self.step = pytensor.shared(np.int64(0), name="step")
        self._wire()
        # The book's code reads and writes these with plain PyTensor, in any mode.
        self.device_copies = self.backend.mirror([*self.params, self.step])
        self.output = self.layers[-1].output
        self.output_dropout = self.layers[-1].output_dropout
        self.history: Any = None
        self._functions: dict[Any, Function] = {}
        self._datasets: OrderedDict[str, DeviceData] = OrderedDict()

    @property
    def head(self) -> SoftmaxLayer:
        """The last layer, which defines the cost (a SoftmaxLayer, checked when built)."""
        return cast(SoftmaxLayer, self.layers[-1])

    def _wire(self) -> None:
        """Give each layer network3's graphs of ``self.x``, from :meth:`forward`."""
        self.backend.apply()
        for layer in self.layers:
            if isinstance(layer, ConvPoolLayer):
                layer.conv_implementation = self.backend.conv_implementation
            if isinstance(layer, FullyConnectedLayer | SoftmaxLayer):
                large = layer.n_in * layer.n_out >= dense.MIN_WEIGHTS
                layer.dense_implementation = self.backend.dense_implementation if large else "dot"
        mbs = self.mini_batch_size
        clean = self.forward(self.x, mbs, deterministic=True)
        noisy = self.forward(self.x, mbs, deterministic=False)
        for index, layer in enumerate(self.layers):
            source = self.dropout_source(index, mbs)
            layer.attach(clean[index], noisy[index], clean[index + 1], noisy[index + 1], source)

    def dropout_source(
        self,
        index: int,
        size: int,
        first_row: TensorVariable | int = 0,
        seed: TensorVariable | None = None,
        step: TensorVariable | None = None,
    ) -> DropoutSource:
        """Layer ``index``'s masks for ``size`` rows from ``first_row`` of a mini-batch
        (``seed`` and ``step`` default to this model's)."""
        seed = self.seed if seed is None else seed
        step = self.step if step is None else step
        return DropoutSource(seed, index, step, size, first_row)

    def forward(
        self,
        x: TensorVariable,
        size: int,
        first_row: TensorVariable | int = 0,
        *,
        deterministic: bool,
        seed: TensorVariable | None = None,
        step: TensorVariable | None = None,
        through: int | None = None,
    ) -> list[TensorVariable]:
        """The one forward walk: ``x`` and each layer's output in turn (the first
        ``through`` layers; all by default). Training, evaluation and network3's
        ``output`` / ``output_dropout`` graphs all come from it."""
        outputs = [x]
        for index, layer in enumerate(self.layers[:through]):
            source = None
            if not deterministic:
                source = self.dropout_source(index, size, first_row, seed, step)
            outputs.append(
                layer.get_output_for(outputs[-1], deterministic=deterministic, dropout=source)
            )
        return outputs

    def summary(self, show: bool = True) -> str:
        """A table of the layers: output shape, parameters and multiply-adds per example,
        with totals (Keras's ``model.summary()``); printed unless ``show=False``."""
        rows = [("layer", "output shape", "parameters", "multiply-adds")]
        for index, layer in enumerate(self.layers):
            rows.append(
                (
                    f"{index}: {layer.name}",
                    str(layer.output_shape),
                    f"{layer.n_params:,}",
                    f"{layer.multiply_adds():,}",
                )
            )
        params = sum(layer.n_params for layer in self.layers)
        macs = sum(layer.multiply_adds() for layer in self.layers)
        rows.append(("total", f"input {self.layers[0].input_shape}", f"{params:,}", f"{macs:,}"))
        widths = [max(len(row[k]) for row in rows) for k in range(4)]

        def line(row: tuple[str, ...]) -> str:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            return "  ".join(cells + [row[k].rjust(widths[k]) for k in (2, 3)])

        rule = "-" * len(line(rows[0]))
        text = "\n".join([line(rows[0]), rule, *map(line, rows[1:-1]), rule, line(rows[-1])])
        if show:
            print(text)
        return text

    # -- data --------------------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return self.layers[0].n_in

    @property
    def n_classes(self) -> int:
        return self.layers[-1].n_out

    def arrays(self, data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
        return as_arrays(data, what, n_features=self.n_in, n_classes=self.n_classes)

    def to_device(self, data: Any, what: str, *, keep: bool = True) -> DeviceData:
        """``data`` on the device. With ``keep``, the last :data:`DATASETS_KEPT` datasets
        (by contents) are kept with their compiled functions, so evaluating the same data
        again neither copies it nor compiles anything."""
        x, y = self.arrays(data, what)
        key = _fingerprint(x, y) if keep else None
        if key is not None and key in self._datasets:
            self._datasets.move_to_end(key)
            return self._datasets[key]
        device = DeviceData(
            self.backend.shared(x, f"{what}_x"), self.backend.shared(y, f"{what}_y"), len(x)
        )
        if key is not None:
            self._datasets[key] = device
            while len(self._datasets) > DATASETS_KEPT:
                self._datasets.popitem(last=False)
        return device

    # -- compiled functions -----------------------------------------------------------
    def _compile(
        self, inputs: list, outputs: Any, *, givens: dict | None = None, updates: Any = ()
    ) -> Function:
        """A function of the backend's mode that computes on :attr:`device_copies`."""
        copies, givens, updates = self.device_copies, givens or {}, list(updates)
        graphs = [*(outputs if isinstance(outputs, list) else [outputs]), *givens.values()]
        graphs += [value for _, value in updates]
        fn = pytensor.function(
            inputs,
            outputs,
            mode=self.backend.mode,
            givens={**givens, **copies.replacements(graphs)},
            updates=[(copies.twin(variable), value) for variable, value in updates],
        )
        fn.trust_input = True
        return self.backend.wrap(fn)

    def train_function(
        self,
        data: DeviceData,
        order: SharedVariable,
        eta: SharedVariable,
        lmbda: float,
        cost_sum: SharedVariable,
        optimizer: Optimizer,
        optimizer_state: Sequence[SharedVariable] = (),
        micro_batch: int | None = None,
    ) -> Function:
        """One optimizer step on mini-batch ``i`` of ``order``; adds its cost to ``cost_sum``.

        The cost is network3's: log-likelihood on the dropout path plus
        ``0.5*lmbda*sum(w**2)/num_training_batches`` over the weights (not biases). The
        ``optimizer`` turns gradients into new parameters and new ``optimizer_state`` (see
        :mod:`convnet.optimizers`). ``micro_batch`` (default: the backend's choice) splits
        each mini-batch into equal parts whose gradients are summed: the same step, to
        float32 rounding, with buffers that fit the CPU's caches. Several steps per call:
        :meth:`~convnet.runtime.backend.Backend.repeat`.
        """
        mbs = self.mini_batch_size
        l2 = self.l2_cost(lmbda, data.n)
        part = self.backend.micro_batch(mbs) if micro_batch is None else micro_batch
        if part < 1 or mbs % part:
            raise ArgumentError(
                f"micro_batch: expected a divisor of mini_batch_size {mbs}. Received: {part!r}."
            )
        if part == mbs:
            data_cost = self.training_cost(self.x, self.y, mbs)
            cost = data_cost + l2
            # The two terms' gradients apart (their sum, as one gradient of the cost makes):
            # the data term's then does not depend on the cost's value, so the fused dense
            # step may take the L2 term's sum of squares (dense.fuse_sgd) without a cycle.
            regularized = set(self.regularized())
            l2_grads = pt.grad(l2, self.params, disconnected_inputs="ignore")
            grads = [
                g + extra if p in regularized else g
                for p, g, extra in zip(
                    self.params, pt.grad(data_cost, self.params), l2_grads, strict=True
                )
            ]
        else:
            cost, grads = self._micro_batched(part, l2)
        i = pt.scalar("i", dtype="int64")
        rows = order[i * mbs + pt.arange(mbs)]
        step_cost, *step_grads = clone_replace([cost, *grads], self._batch(data, rows, mbs))
        new_params, new_state = optimizer.step(self.params, step_grads, optimizer_state, eta)
        state = [*self.params, *optimizer_state, self.step, cost_sum]
        after = [*new_params, *new_state, self.step + 1, cost_sum + step_cost]
        rule = optimizer.sgd_momentum
        if part == mbs <= dense.MAX_ROWS and rule is not None:
            decays = {w: lmbda / -(-data.n // mbs) for w in self.regularized()} if lmbda else {}
            steps = {p: index for index, p in enumerate(self.params)}
            velocities = {  # SGD keeps one velocity per parameter, in order, with momentum
                p: (v, len(self.params) + index)
                for index, (p, v) in enumerate(zip(self.params, optimizer_state, strict=False))
            }
            mu, nesterov = rule
            after = dense.fuse_sgd(after, steps, eta, decays, velocities, mu, nesterov)
        return self._compile([i], [], updates=list(zip(state, after, strict=True)))

    def l2_cost(self, lmbda: float, n_train: int) -> TensorVariable:
        """network3's L2 term: ``0.5*lmbda*sum(w**2)/num_training_batches`` over the
        weights (not the biases)."""
        num_batches = -(-n_train // self.mini_batch_size)
        # A weight the dense kernel may step takes its sum as an Op the fused pass replaces.
        kernel = {
            layer.w
            for layer in self.layers
            if isinstance(layer, FullyConnectedLayer | SoftmaxLayer)
            and layer.dense_implementation == "kernel"
        }
        squares = [
            dense.squared_norm(w) if w in kernel else (w**2).sum() for w in self.regularized()
        ]
        return np.float32(0.5 * lmbda / num_batches) * sum(squares)

    def regularized(self) -> list[SharedVariable]:
        """The parameters the L2 term covers: the weights, not the biases."""
        return [w for layer in self.layers for w in layer.get_params(regularizable=True)]

    def training_cost(
        self,
        x: TensorVariable,
        y: TensorVariable,
        size: int,
        first_row: TensorVariable | int = 0,
        *,
        seed: TensorVariable | None = None,
        step: TensorVariable | None = None,
    ) -> TensorVariable:
        """The training cost (no L2) of ``size`` rows starting at ``first_row`` of a batch.

        ``seed`` and ``step`` (default: this model's) may be symbolic, so that one graph
        draws the dropout masks of several networks (:mod:`convnet.lockstep`).
        """
        last = len(self.layers) - 1
        walk = self.forward(
            x, size, first_row, deterministic=False, seed=seed, step=step, through=last
        )
        source = self.dropout_source(last, size, first_row, seed, step)
        return self.head.cost_for(walk[-1], y, dropout=source)

    def _micro_batched(self, part: int, l2: TensorVariable) -> tuple[Any, list[Any]]:
        """Cost and gradients of a mini-batch as a ``scan`` over ``part``-row slices.

        Under JAX on a CPU one pass over 256 rows of net C keeps ~30 MB of im2col columns
        in flight and ran about 2x slower per image than 16 or 32 rows at a time.
        """
        count = self.mini_batch_size // part
        x_part = pt.matrix("x_part", dtype="float32", shape=(part, self.n_in))
        y_part = pt.vector("y_part", dtype="int32", shape=(part,))
        first_row = pt.scalar("first_row", dtype="int64")
        part_cost = self.training_cost(x_part, y_part, part, first_row)
        part_grads = pt.grad(part_cost, self.params)
        n_params = len(self.params)

        def accumulate(x_j: Any, y_j: Any, first_j: Any, total: Any, *rest: Any) -> list[Any]:
            sums, params, step = rest[:n_params], rest[n_params:-1], rest[-1]
            replace = {x_part: x_j, y_part: y_j, first_row: first_j, self.step: step}
            replace |= dict(zip(self.params, params, strict=True))
            cost_j, *grads_j = clone_replace([part_cost, *part_grads], replace)
            return [total + cost_j, *(a + g for a, g in zip(sums, grads_j, strict=True))]

        traces = pytensor.scan(
            accumulate,
            sequences=[
                self.x.reshape((count, part, self.n_in)),
                self.y.reshape((count, part)),
                pt.arange(count, dtype="int64") * part,
            ],
            outputs_info=[
                pt.constant(np.float32(0.0)),
                *(pt.zeros(p.type.shape, dtype="float32") for p in self.params),
            ],
            non_sequences=[*self.params, self.step],
            return_list=True,
            return_updates=False,
        )
        scale = np.float32(1.0 / count)  # the mean over equal parts is the batch mean
        l2_grads = pt.grad(l2, self.params, disconnected_inputs="ignore")
        cost = traces[0][-1] * scale + l2
        grads = [t[-1] * scale + g for t, g in zip(traces[1:], l2_grads, strict=True)]
        return cost, grads

    def get_weights(self) -> list[np.ndarray]:
        """Copies of every parameter, in ``params`` order."""
        return [np.array(backends.to_numpy(p.get_value(borrow=True))) for p in self.params]

    def set_weights(self, values: Sequence[np.ndarray]) -> None:
        """Replace every parameter (shapes checked), keeping it on the backend's device."""
        if len(values) != len(self.params):
            raise ShapeError(
                f"weights: expected {len(self.params)} arrays. Received: {len(values)}."
            )
        for param, value in zip(self.params, values, strict=True):
            want = param.type.shape
            if tuple(np.shape(value)) != tuple(want):
                raise ShapeError(
                    f"weights: {param.name} expected shape {want}. Received: {np.shape(value)}."
                )
            param.set_value(np.asarray(value, dtype=np.float32))
        self.device_copies.push()

    def _batch(self, data: DeviceData, rows: Any, size: int) -> dict:
        """Graph inputs for the examples at ``rows``, with static shapes (JAX needs them)."""
        return {
            self.x: pt.specify_shape(data.x[rows], (size, self.n_in)),
            self.y: pt.specify_shape(data.y[rows], (size,)),
        }

    def evaluation_function(self, data: DeviceData) -> Function:
        """(correct predictions, summed negative log-likelihood) over rows [start, start +
        eval_batch) of ``data``, on the deterministic path.

        Rows past the end are clamped and masked, so every example counts exactly once
        and the compiled shapes stay static (JAX requires it).
        """
        if data.evaluate is None:
            start = pt.scalar("start", dtype="int64")
            rows = start + pt.arange(self.backend.eval_batch)
            clamped = pt.minimum(rows, data.n - 1)
            inside = pt.lt(rows, data.n)
            last = self.head
            hits = pt.eq(last.y_out, self.y) & inside
            logits = last.logits_for(last.inpt, deterministic=True)
            log_p = pt.special.log_softmax(logits, axis=-1)[pt.arange(rows.shape[0]), self.y]
            data.evaluate = self._compile(
                [start],
                [pt.sum(hits, dtype="int64"), -pt.sum(pt.switch(inside, log_p, np.float32(0.0)))],
                givens=self._batch(data, clamped, self.backend.eval_batch),
            )
        return data.evaluate

    def evaluate(
        self, data: Any, *, lmbda: float = 0.0, n_train: int | None = None, what: str = "data"
    ) -> tuple[float, float]:
        """(accuracy, cost) on ``data`` (a pair, or DeviceData): the cost is the mean
        negative log-likelihood on the deterministic path, plus network3's L2 term for a
        training set of ``n_train`` examples when ``lmbda`` > 0 (as the training cost)."""
        device_data = data if isinstance(data, DeviceData) else self.to_device(data, what)
        evaluate = self.evaluation_function(device_data)
        self.device_copies.push()
        starts = range(0, device_data.n, self.backend.eval_batch)
        with self.backend.threads():
            # Sums stay on the device until the end: one synchronisation per pass.
            parts = [evaluate(np.array(s, dtype=np.int64)) for s in starts]
            hits = int(np.sum([np.asarray(h) for h, _ in parts]))
            nll = float(np.sum([np.asarray(c, np.float64) for _, c in parts]))
        cost = nll / device_data.n
        if lmbda > 0 and n_train:
            weights = [w for layer in self.layers for w in layer.get_params(regularizable=True)]
            squares = sum(float(np.sum(np.square(w.get_value(borrow=True)))) for w in weights)
            cost += 0.5 * lmbda / -(-n_train // self.mini_batch_size) * squares
        return hits / device_data.n, cost

    def accuracy(self, data: Any, what: str = "data") -> float:
        """Fraction of ``data`` (a pair, or DeviceData) classified correctly."""
        return self.evaluate(data, what=what)[0]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities for any number of examples (deterministic path)."""
        images = arrays.images(x, "x", self.n_in)
        batch = self.backend.eval_batch
        if "proba" not in self._functions:
            x = pt.matrix("x", dtype="float32", shape=(batch, self.n_in))
            self._functions["proba"] = self._compile([x], self.output, givens={self.x: x})
        proba = self._functions["proba"]
        self.device_copies.push()
        out = []
        with self.backend.threads():
            for start in range(0, len(images), batch):
                chunk = images[start : start + batch]
                padded = np.zeros((batch, self.n_in), np.float32)
                padded[: len(chunk)] = chunk  # one static shape: JAX compiles once
                out.append(np.asarray(proba(padded))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.n_classes), np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class of each example."""
        return self.predict_proba(x).argmax(axis=1)
