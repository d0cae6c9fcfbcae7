"""Backend selection, the GPU refusal on CPU machines, and device residency in JAX mode."""

from __future__ import annotations

import numpy as np
import pytest

from convnet import FullyConnectedLayer, Network, SoftmaxLayer
from convnet.errors import ArgumentError, BackendError
from convnet.runtime import backend as backends


def test_environment_chooses_the_backend(monkeypatch):
    monkeypatch.setenv("CONVNET_BACKEND", "c")
    monkeypatch.setenv("CONVNET_DEVICE", "cpu")
    assert backends.resolve() == backends.Backend("c", "cpu")
    assert backends.resolve("numba").name == "numba"  # the argument wins
    monkeypatch.setenv("CONVNET_BACKEND", "tpu")
    with pytest.raises(ArgumentError, match=r"CONVNET_BACKEND.*Received: 'tpu'"):
        backends.resolve()


def test_auto_prefers_jax_when_installed(monkeypatch):
    monkeypatch.delenv("CONVNET_BACKEND", raising=False)
    assert backends.resolve("auto", "cpu").name == ("jax" if backends.jax_available() else "c")


def test_gpu_needs_jax_backend():
    with pytest.raises(BackendError, match="needs backend='jax'"):
        backends.resolve("c", "gpu")


def test_gpu_without_cuda_fails_clearly_instead_of_falling_back():
    pytest.importorskip("jax")
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendError, match=r"never\s+falls back|CPU-only|no GPU") as info:
        Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, backend="jax", device="gpu")
    assert "Devices found" in str(info.value)


def test_jax_keeps_weights_and_data_on_the_device():
    """convnet's functions compute on device twins; the book's variables stay numpy."""
    jax = pytest.importorskip("jax")
    net = Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, backend="jax", seed=0)
    rng = np.random.default_rng(0)
    x, y = rng.random((10, 4), dtype=np.float32), rng.integers(0, 2, 10).astype(np.int32)
    twins = net.device_copies.twins
    assert all(isinstance(t.get_value(borrow=True), jax.Array) for t in twins)
    assert all(isinstance(p.get_value(borrow=True), np.ndarray) for p in net.params)
    data = net.to_device((x, y), "training_data")
    assert isinstance(data.x.get_value(borrow=True), jax.Array)
    net.SGD((x, y), 2, 2, 0.1, verbose=False)
    for param, twin in zip(net.params, twins[: len(net.params)], strict=True):
        value = twin.get_value(borrow=True)  # still on the device, float32 after updates
        assert isinstance(value, jax.Array) and value.dtype == np.float32
        host = param.get_value(borrow=True)  # brought back after training, writable
        assert isinstance(host, np.ndarray) and host.flags.writeable
        np.testing.assert_array_equal(host, np.asarray(value))


@pytest.mark.parametrize("change", ["set_value", "in_place"])
def test_a_users_change_to_a_weight_reaches_the_device(change):
    pytest.importorskip("jax")
    net = Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, backend="jax", seed=0)
    x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    before = net.predict_proba(x)
    w = net.layers[-1].w
    if change == "set_value":
        w.set_value(np.array([[1.0, -1.0]] * 3, np.float32))
    else:  # what PyTensor's Numba and C modes do with a user's updates
        w.get_value(borrow=True)[:] = [[1.0, -1.0]] * 3
    after = net.predict_proba(x)
    assert not np.allclose(before, after)
    np.testing.assert_array_equal(np.asarray(net.device_copies.twin(w).get_value()), w.get_value())


def test_layers_move_back_to_numpy_for_a_c_network():
    layers = [FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)]
    Network(layers, 2, backend="jax", seed=0)
    net = Network(layers, 2, backend="c", device="cpu", seed=0)
    assert all(isinstance(p.get_value(borrow=True), np.ndarray) for p in net.params)


def test_jax_loops_over_steps_on_every_device():
    assert backends.Backend("jax", "cpu").steps_per_call == 100
    assert backends.Backend("jax", "gpu").steps_per_call == 100
    assert backends.Backend("c", "cpu").steps_per_call == 1


def test_cpu_micro_batches_are_the_largest_divisor_up_to_16():
    cpu, gpu = backends.Backend("jax", "cpu"), backends.Backend("jax", "gpu")
    assert [cpu.micro_batch(m) for m in (10, 16, 20, 64, 100, 256)] == [10, 16, 10, 16, 10, 16]
    assert cpu.micro_batch(17) == 17  # a prime: no part of 8 or more divides it
    assert gpu.micro_batch(256) == 256
    assert backends.Backend("c", "cpu").micro_batch(256) == 256  # measured under JAX only


def test_gpus_multiply_in_tf32_unless_asked_for_float32(monkeypatch):
    monkeypatch.delenv("CONVNET_PRECISION", raising=False)
    assert backends.resolve("jax", "cpu").precision == "tf32"
    assert backends.Backend("jax", "gpu").matmul_precision is None  # XLA's default: TF32
    assert backends.Backend("jax", "gpu", "float32").matmul_precision == "highest"
    assert backends.Backend("jax", "cpu", "float32").matmul_precision is None  # float32 anyway
    monkeypatch.setenv("CONVNET_PRECISION", "float32")
    assert backends.resolve("jax", "cpu").precision == "float32"
    assert backends.resolve("jax", "cpu", "tf32").precision == "tf32"  # the argument wins
    monkeypatch.setenv("CONVNET_PRECISION", "bf16")
    with pytest.raises(ArgumentError, match=r"CONVNET_PRECISION.*'bf16'"):
        backends.resolve("jax", "cpu")
    with pytest.raises(ArgumentError, match=r"^precision: expected one of .*'fp16'"):
        Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, precision="fp16")


def test_compiled_calls_run_under_the_precision_and_keep_their_attributes():
    import jax

    seen = []
    before = jax.config.jax_default_matmul_precision

    def compiled(x):
        seen.append(jax.config.jax_default_matmul_precision)
        return x + 1

    compiled.maker = "the function's maker"
    wrapped = backends.Backend("jax", "gpu", "float32").wrap(compiled)
    assert wrapped(1) == 2 and seen == ["highest"]
    assert jax.config.jax_default_matmul_precision == before  # restored after the call
    assert wrapped.maker == "the function's maker"
    assert backends.Backend("jax", "gpu", "tf32").wrap(compiled) is compiled
    assert backends.Backend("jax", "cpu", "float32").wrap(compiled) is compiled


def test_a_loop_of_steps_runs_under_the_precision_and_trains_as_single_steps(monkeypatch):
    """The GPU's float32 wrapper around a loop of steps (here on the CPU): the loop is
    traced under the precision, and trains bit for bit as one step per call."""
    import jax

    from convnet.optimizers import SGD
    from convnet.runtime.step_loop import StepLoop
    from convnet.trainer import FitOptions, Trainer

    monkeypatch.setattr(backends.Backend, "matmul_precision", property(lambda self: "highest"))
    rng = np.random.default_rng(2)
    x = rng.random((60, 6), dtype=np.float32)
    y = x[:, :3].argmax(axis=1).astype(np.int32)
    seen: list[str] = []
    results = []
    for steps in (1, 3):
        net = Network([FullyConnectedLayer(6, 5), SoftmaxLayer(5, 3)], 10, backend="jax", seed=1)
        options = FitOptions(1, SGD(0.5), verbose=False, steps_per_call=steps)
        trainer = Trainer(net, net.to_device((x, y), "training_data"), None, None, options)
        function, _, _ = trainer.calls[0]
        assert isinstance(function, backends.PreciseFunction)
        if steps > 1:
            assert isinstance(function.function, StepLoop)
            inner = function.function.run

            def traced(*args, inner=inner):
                seen.append(jax.config.jax_default_matmul_precision)
                return inner(*args)

            function.function.run = traced
        trainer.run()
        results.append(net.get_weights())
    assert seen and set(seen) == {"highest"}
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
