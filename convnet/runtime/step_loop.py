"""Many optimizer steps in one compiled call: the one-step program inside an XLA loop.

A training run calls its compiled step once per mini-batch. Under JAX each call of the
one-step program costs more than the step itself: XLA sets up the program's buffers and
thread-pool work for every call, and each call starts with cold caches. Inside a loop the
same step takes ~20% less time on a CPU (net C at mini-batch 10; benchmarks/RESULTS.md).

PyTensor's ``scan`` gave that speed but took longer to build (its inner graph is rewritten
and traced on its own), so only long runs used it. Here the loop is built in
JAX around the step PyTensor already compiled, ``jax.lax.fori_loop`` over its jitted
function: XLA compiles one program and every run gets the loop's speed. Other backends
call their step ``steps`` times from Python (no loop of theirs was measured faster).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class StepCalls:
    """``steps`` calls of ``step`` (a compiled function of the first mini-batch index that
    only updates shared variables) from mini-batch ``first`` on, one call after another."""

    def __init__(self, step: Any, steps: int) -> None:
        self.step, self.steps = step, steps

    def __call__(self, first: np.ndarray) -> None:
        for k in range(self.steps):
            self.step(np.array(first + k, dtype=np.int64))


class StepLoop:
    """``steps`` calls of ``step`` (as for :class:`StepCalls`, compiled in PyTensor's
    JAX mode) in one compiled call: the updated values are carried through an XLA loop
    and written back to the shared variables once, at the end."""

    def __init__(self, step: Any, steps: int) -> None:
        import jax

        fgraph = step.maker.fgraph
        if len(fgraph.outputs) != len(fgraph.update_mapping):
            raise ValueError("a step function returns nothing but its updates")
        # (output position, input position) of each update; input 0 is the index.
        self.updates = sorted(fgraph.update_mapping.items())
        self.storage = [container.storage for container in step.input_storage]
        one_step = step.vm.jit_fn

        def run(first: Any, *values: Any) -> tuple[Any, ...]:
            def advance(k: Any, carried: tuple[Any, ...]) -> tuple[Any, ...]:
                inputs = [first + k, *values]
                for (_, position), value in zip(self.updates, carried, strict=True):
                    inputs[position] = value
                outputs = one_step(*inputs)
                return tuple(outputs[out] for out, _ in self.updates)

            start = [(first, *values)[position] for _, position in self.updates]
            return jax.lax.fori_loop(0, steps, advance, tuple(start))

        self.run = jax.jit(run)
        self.steps = steps

    def lower(self, first: np.ndarray) -> Any:
        """The loop as JAX lowers it for the variables' current values (for inspection)."""
        return self.run.lower(first, *(cell[0] for cell in self.storage[1:]))

    def __call__(self, first: np.ndarray) -> None:
        values = [cell[0] for cell in self.storage[1:]]
        results = self.run(first, *values)
        for (_, position), value in zip(self.updates, results, strict=True):
            self.storage[position][0] = value


def repeat(step: Any, steps: int, jax_mode: bool) -> Any:
    """A call that runs ``steps`` steps of ``step`` from a mini-batch index: ``step``
    itself for one, else a :class:`StepLoop` (JAX mode) or :class:`StepCalls`."""
    if steps == 1:
        return step
    if jax_mode and not step.maker.linker.scalar_shape_inputs:
        return StepLoop(step, steps)
    return StepCalls(step, steps)
