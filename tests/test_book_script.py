"""What the book's ``conv.py`` does with convnet's objects, in plain PyTensor.

Its ``ensemble()`` compiles its own function over ``net.layers[-1].y_out`` with ``givens``
slicing ``load_data_shared()``'s test set and votes; ``plot_filters()`` calls
``layer.w.eval()``; ``expanded_data()`` loads ``../data/mnist_expanded.pkl.gz``. All of it
in PyTensor's default mode (Numba), whatever backend trained the nets.
"""

from __future__ import annotations

import gzip
import pickle
from collections import Counter

import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

import convnet as network3
from convnet import ConvPoolLayer, FullyConnectedLayer, Network, ReLU, SoftmaxLayer
from convnet.cli.main import main
from convnet.data import book_format
from convnet.data.mnist import load_mnist
from convnet.errors import DataError, DataNotFoundError

MBS = 10


def _book_net(seed: int) -> Network:
    """The book's net C (two ConvPools, ReLU), written as the book writes it."""
    return Network(
        [
            ConvPoolLayer(
                image_shape=(MBS, 1, 28, 28),
                filter_shape=(20, 1, 5, 5),
                poolsize=(2, 2),
                activation_fn=ReLU,
            ),
            ConvPoolLayer(
                image_shape=(MBS, 20, 12, 12),
                filter_shape=(40, 20, 5, 5),
                poolsize=(2, 2),
                activation_fn=ReLU,
            ),
            FullyConnectedLayer(n_in=40 * 4 * 4, n_out=100, activation_fn=ReLU),
            SoftmaxLayer(n_in=100, n_out=10),
        ],
        MBS,
        seed=seed,
    )


@pytest.fixture(scope="module")
def book_data(mnist_dir):
    return network3.load_data_shared()


@pytest.fixture(scope="module")
def trained_nets(book_data):
    training_data, validation_data, _ = book_data
    x, y = training_data
    small = (pytensor.shared(x.get_value()[:2000]), pytensor.shared(y.get_value()[:2000]))
    nets = []
    for seed in (0, 1):
        net = _book_net(seed)
        net.SGD(small, 1, MBS, 0.03, validation_data, lmbda=0.1, verbose=False)
        nets.append(net)
    return nets


def test_plot_filters_reads_the_trained_weights_with_eval(trained_nets):
    net = trained_nets[0]
    filters = net.layers[0].w.eval()
    assert isinstance(filters, np.ndarray) and filters.shape == (20, 1, 5, 5)
    np.testing.assert_array_equal(filters, net.get_weights()[0])  # the trained values
    assert isinstance(net.layers[1].b.get_value(), np.ndarray)
    assert not np.array_equal(filters, _book_net(0).layers[0].w.eval())  # training moved them


def test_the_books_ensemble_vote_runs_on_its_own_functions(book_data, trained_nets):
    _, _, test_data = book_data
    test_x, test_y = test_data
    n_batches = 200  # the book votes on all 1,000 mini-batches; 2,000 images keep this quick
    for net in trained_nets:
        i = pt.lscalar()  # mini-batch index
        net.test_mb_predictions = pytensor.function(
            [i],
            net.layers[-1].y_out,
            givens={net.x: test_x[i * net.mini_batch_size : (i + 1) * net.mini_batch_size]},
        )
        net.test_predictions = list(
            np.concatenate([net.test_mb_predictions(i) for i in range(n_batches)])
        )
    images = test_x.get_value()[: n_batches * MBS]
    for net in trained_nets:  # the user's function agrees with convnet's own
        np.testing.assert_array_equal(net.test_predictions, net.predict(images))
    all_test_predictions = list(zip(*[net.test_predictions for net in trained_nets], strict=True))

    def plurality(p):
        return Counter(p).most_common(1)[0][0]

    test_y_eval = test_y.eval()
    errors = [
        j for j in range(n_batches * MBS) if plurality(all_test_predictions[j]) != test_y_eval[j]
    ]
    first_net_errors = np.sum(trained_nets[0].predict(images) != test_y_eval[: len(images)])
    assert len(errors) == first_net_errors  # ties go to the first net, as Counter orders
    assert len(errors) < 0.5 * len(images)  # chance would miss 90%


def test_a_users_own_update_function_changes_what_convnet_computes(book_data):
    """The user trains with their own PyTensor SGD step; convnet's accuracy sees the result."""
    training_data, _, test_data = book_data
    x, y = training_data
    net = _book_net(2)
    before = net.accuracy(test_data)
    i = pt.lscalar()
    cost = net.layers[-1].cost(net)
    grads = pt.grad(cost, net.params)
    train_mb = pytensor.function(
        [i],
        cost,
        updates=[(p, p - np.float32(0.03) * g) for p, g in zip(net.params, grads, strict=True)],
        givens={net.x: x[i * MBS : (i + 1) * MBS], net.y: y[i * MBS : (i + 1) * MBS]},
    )
    for k in range(100):
        train_mb(k)
    after = net.accuracy(test_data)
    assert after > before + 0.3  # from 9.8% (chance) to well above
    np.testing.assert_array_equal(net.get_weights()[0], net.layers[0].w.get_value())


@pytest.mark.parametrize("mode", ["CVM", "NUMBA", "JAX"])
def test_every_graph_the_book_reaches_runs_in_any_mode(mode, rng):
    """``output``, ``output_dropout`` and ``y_out`` of a conv net with dropout, compiled by
    the user in PyTensor's C, Numba and JAX modes, against convnet's own results."""
    net = Network(
        [
            ConvPoolLayer(image_shape=(4, 1, 12, 12), filter_shape=(3, 1, 3, 3)),
            FullyConnectedLayer(n_in=3 * 5 * 5, n_out=8, p_dropout=0.5),
            SoftmaxLayer(n_in=8, n_out=10),
        ],
        4,
        seed=0,
    )
    images = rng.random((4, 144), dtype=np.float32)
    hidden, last = net.layers[1], net.layers[-1]
    proba, labels, kept, dropped = pytensor.function(
        [net.x], [last.output, last.y_out, hidden.output, hidden.output_dropout], mode=mode
    )(images)
    np.testing.assert_allclose(proba, net.predict_proba(images), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, net.predict(images))
    reference = pytensor.function([net.x], hidden.output_dropout, mode="FAST_COMPILE")(images)
    np.testing.assert_allclose(dropped, reference, rtol=1e-5, atol=1e-6)  # the same masks
    assert not np.allclose(dropped, kept)  # and they do drop units
    assert np.asarray(net.layers[0].w.eval(mode=mode)).shape == (3, 1, 3, 3)


def _python2_style_expanded_file(path, rng):
    """As the book's expand_mnist.py left it: lists of images, labels as np.int64 scalars,
    a protocol-2 pickle in gzip."""
    images = [rng.random(784).astype(np.float32) for _ in range(30)]
    labels = [np.int64(k % 10) for k in range(30)]
    validation = (rng.random((5, 784)).astype(np.float32), np.arange(5, dtype=np.int64))
    test = (rng.random((7, 784)).astype(np.float32), np.arange(7, dtype=np.int64) % 10)
    with gzip.open(path, "wb") as handle:
        pickle.dump(([images, labels], validation, test), handle, protocol=2)
    return images, labels


def test_load_data_shared_reads_the_books_expanded_file(tmp_path, rng):
    path = tmp_path / "mnist_expanded.pkl.gz"
    images, labels = _python2_style_expanded_file(path, rng)
    expanded_training_data, validation_data, test_data = network3.load_data_shared(str(path))
    x, y = expanded_training_data
    np.testing.assert_array_equal(x.get_value(), np.stack(images))
    np.testing.assert_array_equal(y.get_value(), labels)
    assert network3.size(validation_data) == 5 and network3.size(test_data) == 7
    assert x.eval().shape == (30, 784)  # plain PyTensor, default mode


def test_a_missing_expanded_file_names_the_command_that_makes_it(tmp_path):
    path = tmp_path / "data" / "mnist_expanded.pkl.gz"
    with pytest.raises(DataNotFoundError, match="convnet expand-mnist --out") as caught:
        network3.load_data_shared(str(path))
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["mnist_expanded.pkl.gz", "mnist_expanded.npz"])
def test_expand_mnist_writes_the_books_file_where_asked(tmp_path, monkeypatch, mnist, name, capsys):
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))  # its cache goes there
    out = tmp_path / "data" / name
    assert main(["expand-mnist", "--limit", "20", "--out", str(out)]) == 0
    (x, y), validation, test = network3.load_mnist(out)
    assert x.shape == (100, 784) and y.shape == (100,)
    training = mnist[0]
    originals = {row.tobytes() for row in training[0][:20]}
    assert sum(row.tobytes() in originals for row in x) == 20  # the originals and 4 shifts each
    np.testing.assert_array_equal(validation[1], mnist[1][1])
    np.testing.assert_array_equal(test[0], mnist[2][0])
    if name.endswith(".pkl.gz"):  # the book's layout, readable by plain pickle
        with gzip.open(out, "rb") as handle:
            (bx, by), _, _ = pickle.load(handle)
        np.testing.assert_array_equal(bx, x)
        assert by.dtype == np.int64
    written = out.read_bytes()
    assert main(["expand-mnist", "--limit", "20", "--out", str(out)]) == 2  # never overwritten
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == written


def test_convnets_expansion_cache_is_not_a_dataset(tmp_path):
    path = tmp_path / "mnist_expanded_50000.npz"
    np.savez(path, x=np.zeros((5, 784), np.uint8), y=np.zeros(5, np.int64))
    with pytest.raises(DataError, match="convnet expand-mnist --out"):
        network3.load_mnist(path)


def test_expand_mnist_names_an_out_path_it_cannot_write(tmp_path, monkeypatch, mnist, capsys):
    monkeypatch.setenv("CONVNET_CACHE", str(tmp_path / "cache"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["expand-mnist", "--limit", "5", "--out", str(blocker / "x.pkl.gz")]) == 2
    assert f"{blocker / 'x.pkl.gz'}: cannot be written" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_expand_mnist_writes_a_plain_pkl_and_refuses_a_suffix_it_cannot_write(tmp_path, capsys):
    splits = tuple((np.zeros((3, 784), np.float32), np.arange(3)) for _ in range(3))
    plain = book_format.write(tmp_path / "expanded.pkl", splits)
    assert plain.read_bytes()[:1] == b"\x80"  # a pickle, not a gzip stream
    assert load_mnist(plain)[2][0].shape == (3, 784)
    with pytest.raises(DataError, match=r"expanded\.txt: convnet writes the book's format as"):
        book_format.write(tmp_path / "expanded.txt", splits)
    assert not (tmp_path / "expanded.txt").exists()
    (tmp_path / "garbage.pkl").write_bytes(b"\x1f\x8bnot a pickle")
    with pytest.raises(DataError, match=r"garbage\.pkl: not a readable pickle .*KeyError"):
        load_mnist(tmp_path / "garbage.pkl")
