"""The book's network.py, network2.py and mnist_loader on convnet (convnet.book): the
seed's algorithm to 1e-12, the book's seeded figure data to the digit, its formats, and
its mistakes answered by name."""

from __future__ import annotations

import gzip
import json
import pickle
import platform
import random
import shutil

import numpy as np
import pytest

from convnet.book import mnist_loader, network, network2, shuffle, sigmoid_kernel
from convnet.errors import ArgumentError, BackendError, ModelFileError, ShapeError
from convnet.runtime import kernel
from tests import reference

# The book's fig/overfitting.json, its first 20 epochs (facts carried over from the book's
# repository): network2, [784, 30, 10], cross-entropy, large weights, 1,000 training
# images, 10 per mini-batch, eta 0.5, seeds 12345678.
# fmt: off
TEST_COST = [
    2.076277232332908, 1.8232334122685845, 1.6640751933146665, 1.4913409287162824,
    1.4626645665352562, 1.5608730982986192, 1.3270934349008427, 1.3031689400520545,
    1.2737198013316875, 1.2353298430277617, 1.2781249875365142, 1.2587094591590358,
    1.2236320447498565, 1.2049258878595992, 1.202838510821453, 1.217590328480458,
    1.2166038163981336, 1.2302002518540471, 1.2284292747614989, 1.2284082512336671,
]
TEST_ACCURACY = [
    5887, 6505, 6970, 7271, 7433, 7198, 7710, 7747, 7850, 7899, 7853, 7848, 7986, 8020, 8046,
    8039, 8056, 8090, 8090, 8107,
]
TRAINING_COST = [
    1.8433647860328504, 1.4777434227600235, 1.2072861295975754, 1.0133122929166287,
    0.9046315580572455, 0.8891408524587663, 0.6951073639967202, 0.6006328206990252,
    0.5409160311041388, 0.47790622727830795, 0.45205834534806816, 0.4182355725992857,
    0.3635388665811726, 0.34097725702984655, 0.30704391068438625, 0.2850523820615701,
    0.27569888987164376, 0.24768957063883623, 0.23176895744869463, 0.21675013886039948,
]
TRAINING_ACCURACY = [
    690, 749, 812, 848, 872, 865, 914, 932, 948, 949, 957, 966, 970, 973, 979, 977, 981, 982,
    982, 985,
]
# fmt: on


def _pairs(rng, n, sizes, labels=False):
    """``n`` random pairs in the book's format: training (one-hot y) or evaluation (digit)."""
    pairs = []
    for _ in range(n):
        x = rng.random((sizes[0], 1))
        digit = int(rng.integers(0, sizes[-1]))
        y = np.zeros((sizes[-1], 1))
        y[digit] = 1.0
        pairs.append((x, digit if labels else y))
    return pairs


def _relative(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(b)))


NETS = [
    ("network", lambda s: network.Network(s), True),
    ("network2-quadratic", lambda s: network2.Network(s, cost=network2.QuadraticCost), True),
    ("network2-cross-entropy", lambda s: network2.Network(s), False),
]


@pytest.mark.parametrize(("name", "make", "quadratic"), NETS, ids=[n[0] for n in NETS])
@pytest.mark.parametrize("sizes", [[2, 3, 1], [5, 4, 3, 2], [784, 30, 10]])
def test_backprop_is_the_seeds_algorithm(name, make, quadratic, sizes):
    np.random.seed(1)
    net = make(sizes)
    rng = np.random.default_rng(2)
    for x, y in _pairs(rng, 3, sizes):
        nabla_b, nabla_w = net.backprop(x, y)
        want_b, want_w = reference.seed_backprop(net.weights, net.biases, x, y, quadratic)
        for got, want in zip(nabla_b + nabla_w, want_b + want_w, strict=True):
            assert got.shape == want.shape
            assert _relative(got, want) < 1e-12


@pytest.fixture(params=["kernel", "xla"])
def path(request, monkeypatch):
    """Each test runs on convnet's CPU kernel and on the PyTensor/JAX programs."""
    if request.param == "xla":
        monkeypatch.setenv("CONVNET_KERNEL", "0")
    elif not sigmoid_kernel.available():
        pytest.skip(f"the book's kernel is not available here: {kernel.book_why_not()}")
    return request.param


def test_the_kernel_is_built_where_a_compiler_is():
    if any(shutil.which(c) for c in ("c++", "g++", "clang++")) and platform.machine() in (
        "x86_64",
        "AMD64",
    ):
        assert sigmoid_kernel.available(), kernel.book_why_not()


@pytest.mark.parametrize(("name", "make", "quadratic"), NETS, ids=[n[0] for n in NETS])
@pytest.mark.parametrize("sizes", [[6, 3], [6, 5, 3], [9, 37, 4], [5, 17, 6, 3]])
def test_an_epoch_of_sgd_is_the_seeds_steps_in_python_2s_order(path, name, make, quadratic, sizes):
    np.random.seed(3)
    net = make(sizes)
    weights, biases = [w.copy() for w in net.weights], [b.copy() for b in net.biases]
    data = _pairs(np.random.default_rng(4), 23, sizes)  # 23: a short last mini-batch
    data[3][0][:] = 0.0  # an image with no lit pixel
    for x, _ in data[5:9]:
        x[x < 0.6] = 0.0  # sparse images, as MNIST's
    expected_order = list(data)
    lmbda = 0.0 if name == "network" else 0.7
    random.seed(5)
    shuffle.shuffle(expected_order)
    for k in range(0, 23, 4):
        weights, biases = reference.seed_sgd_step(
            weights, biases, expected_order[k : k + 4], 0.9, lmbda, 23, quadratic
        )
    random.seed(5)
    if name == "network":
        net.SGD(data, 1, 4, 0.9)
    else:
        net.SGD(data, 1, 4, 0.9, lmbda=lmbda)
    assert [id(p) for p in data] == [id(p) for p in expected_order]  # shuffled in place
    for got, want in zip(net.weights + net.biases, weights + biases, strict=True):
        assert got.shape == want.shape
        assert _relative(got, want) < 1e-12
    evaluation = [(x, int(np.argmax(y))) for x, y in data]
    want = sum(int(np.argmax(reference_forward(net, x)) == y) for x, y in evaluation)
    assert (net.evaluate if name == "network" else net.accuracy)(evaluation) == want


def test_update_mini_batch_and_a_replaced_backprop():
    sizes = [4, 3, 2]
    np.random.seed(6)
    net = network2.Network(sizes)
    batch = _pairs(np.random.default_rng(7), 5, sizes)
    want_w, want_b = reference.seed_sgd_step(net.weights, net.biases, batch, 0.3, 2.0, 50, False)
    net.update_mini_batch(batch, 0.3, 2.0, 50)
    for got, want in zip(net.weights + net.biases, want_w + want_b, strict=True):
        assert _relative(got, want) < 1e-12

    class Halved(network2.Network):  # a reader's own backprop is the one that runs
        def backprop(self, x, y):
            nabla_b, nabla_w = super().backprop(x, y)
            return [b / 2 for b in nabla_b], [w / 2 for w in nabla_w]

    np.random.seed(6)
    halved = Halved(sizes)
    before = [w.copy() for w in halved.weights]
    halved.update_mini_batch(batch, 0.6, 0.0, 50)
    np.random.seed(6)
    plain = network2.Network(sizes)
    plain.update_mini_batch(batch, 0.3, 0.0, 50)
    assert _relative(halved.weights[0], plain.weights[0]) < 1e-12
    assert not np.array_equal(halved.weights[0], before[0])


def test_shuffle_draws_as_python_2_did():
    draws = iter([0.5, 0.9, 0.0, 0.25])  # j = int(r * (i + 1)) for i = 4, 3, 2, 1
    items = list("abcde")
    shuffle.shuffle(items, lambda: next(draws))
    # i=4: j=2 -> abedc; i=3: j=3 -> abedc; i=2: j=0 -> ebadc; i=1: j=0 -> beadc
    assert items == list("beadc")
    mine, theirs = list(range(100)), list(range(100))
    random.seed(12345678)
    shuffle.shuffle(mine)
    random.seed(12345678)
    random.shuffle(theirs)
    assert mine != theirs  # Python 3 draws another order: why the book needs this one


@pytest.mark.mnist
def test_the_books_overfitting_figure_to_the_digit(path, capsys):
    random.seed(12345678)
    np.random.seed(12345678)
    training_data, _, test_data = mnist_loader.load_data_wrapper()
    net = network2.Network([784, 30, 10], cost=network2.CrossEntropyCost())
    net.large_weight_initializer()
    test_cost, test_accuracy, training_cost, training_accuracy = net.SGD(
        training_data[:1000], 20, 10, 0.5, evaluation_data=test_data, lmbda=0.0,
        monitor_evaluation_cost=True, monitor_evaluation_accuracy=True,
        monitor_training_cost=True, monitor_training_accuracy=True,
    )  # fmt: skip
    assert test_accuracy == TEST_ACCURACY
    assert training_accuracy == TRAINING_ACCURACY
    assert all(type(a) is int for a in test_accuracy + training_accuracy)  # json.dump-able
    assert _relative(test_cost, TEST_COST) < 1e-9
    assert _relative(training_cost, TRAINING_COST) < 1e-9
    printed = capsys.readouterr().out.splitlines()
    assert printed[:6] == [
        "Epoch 0 training complete",
        f"Cost on training data: {training_cost[0]}",
        "Accuracy on training data: 690 / 1000",
        f"Cost on evaluation data: {test_cost[0]}",
        "Accuracy on evaluation data: 5887 / 10000",
        "",
    ]


@pytest.mark.mnist
def test_mnist_loader_gives_the_books_values_and_formats():
    (train_x, train_y), (valid_x, _), (test_x, _) = mnist_loader.load_data()
    assert train_x.shape == (50000, 784) and valid_x.shape == test_x.shape == (10000, 784)
    assert train_x.dtype == np.float32 and train_y.dtype == np.int64
    assert np.array_equal(train_x * 256, np.round(train_x * 256))  # bytes / 256, exactly
    assert train_x.max() == np.float32(255 / 256)
    training, validation, test = mnist_loader.load_data_wrapper()
    assert isinstance(training, list) and len(training) == 50000
    x, y = training[0]
    assert x.shape == (784, 1) and y.shape == (10, 1) and y.sum() == 1.0
    assert int(np.argmax(y)) == int(train_y[0])
    x, digit = validation[0]
    assert x.shape == (784, 1) and isinstance(digit, np.integer)
    assert len(test) == 10000


def test_chapter_1s_network_prints_the_books_lines(capsys):
    sizes = [784, 8, 10]
    np.random.seed(8)
    net = network.Network(sizes)
    rng = np.random.default_rng(9)
    training, test = _pairs(rng, 40, sizes), _pairs(rng, 15, sizes, labels=True)
    net.SGD(training, 2, 10, 3.0, test_data=test)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Epoch 0: ") and lines[0].endswith(" / 15")
    correct = net.evaluate(test)
    assert type(correct) is int
    want = sum(int(np.argmax(reference_forward(net, x)) == y) for x, y in test)
    assert correct == want
    assert lines[1] == f"Epoch 1: {correct} / 15"
    net.SGD(training, 1, 10, 3.0)
    assert capsys.readouterr().out == "Epoch 0 complete\n"


def reference_forward(net, a):
    for w, b in zip(net.weights, net.biases, strict=True):
        a = reference.sigmoid(w @ a + b)
    return a


def test_feedforward_accuracy_and_total_cost_against_numpy(path):
    sizes = [7, 5, 4]
    np.random.seed(10)
    net = network2.Network(sizes)
    rng = np.random.default_rng(11)
    training, evaluation = _pairs(rng, 30, sizes), _pairs(rng, 20, sizes, labels=True)
    x = training[0][0]
    assert _relative(net.feedforward(x), reference_forward(net, x)) < 1e-14
    outputs = [reference_forward(net, x) for x, _ in training]
    targets = [y for _, y in training]
    want = sum(network2.CrossEntropyCost.fn(a, y) for a, y in zip(outputs, targets, strict=True))
    squares = sum(float(np.sum(w**2)) for w in net.weights)
    want = want / 30 + 0.5 * (0.4 / 30) * squares
    assert abs(net.total_cost(training, 0.4) - want) < 1e-12 * want
    net.cost = network2.QuadraticCost
    want_q = sum(0.5 * np.sum((a - y) ** 2) for a, y in zip(outputs, targets, strict=True)) / 30
    assert abs(net.total_cost(training, 0.0) - want_q) < 1e-12 * want_q
    labels = [int(np.argmax(y)) for _, y in training]
    guesses = [int(np.argmax(a)) for a in outputs]
    assert net.accuracy(training, convert=True) == sum(
        g == t for g, t in zip(guesses, labels, strict=True)
    )
    one_hot = [(x, np.eye(4)[:, [y]]) for x, y in evaluation]
    assert abs(net.total_cost(evaluation, 1.0, convert=True) - net.total_cost(one_hot, 1.0)) < 1e-12
    net.cost = network2.CrossEntropyCost
    net.weights[-1] = net.weights[-1] * 1e3  # saturated: a = 0 or 1, log(0), nan_to_num
    outputs = [reference_forward(net, x) for x, _ in training]
    assert any(((a == 0) | (a == 1)).any() for a in outputs)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        want = sum(
            network2.CrossEntropyCost.fn(a, y) for a, y in zip(outputs, targets, strict=True)
        )
    squares = sum(float(np.sum(w**2)) for w in net.weights)
    want = want / 30 + 0.5 * (0.4 / 30) * squares
    got = net.total_cost(training, 0.4)
    assert got == want or abs(got - want) < 1e-12 * want  # both inf where a y = 0 has a = 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("sizes", [[784, 100, 10], [300, 30, 7, 10], [70, 3, 2]])
def test_a_pass_over_a_data_set_is_each_examples_forward_pass(path, sizes, dtype):
    """The kernel's pass takes inputs in chunks, examples in blocks, several at once: every
    output must still be the example's own forward pass (blank images, sparse and dense
    ones, more examples than a block, a subset in another order)."""
    np.random.seed(12)
    net = network2.Network(sizes, dtype=dtype)
    rng = np.random.default_rng(13)
    pairs = _pairs(rng, 150, sizes, labels=True)
    for i, (x, _) in enumerate(pairs):
        x[rng.random(x.shape) < (i % 5) / 5] = 0.0  # blank (i % 5 == 0 keeps all) to sparse
    pairs[7] = (np.zeros((sizes[0], 1)), 1)
    tolerance = 1e-13 if dtype == "float64" else 1e-5
    for data in (pairs, pairs[::-3]):
        got = net._outputs(data, "test_data").outputs
        want = np.hstack([reference_forward(net, x) for x, _ in data]).T
        assert got.shape == want.shape
        assert _relative(got, want) < tolerance
        right = sum(int(np.argmax(w)) == y for w, (_, y) in zip(want, data, strict=True))
        assert net.accuracy(data) == right


def test_save_writes_the_books_format_and_load_reads_the_books_files(tmp_path):
    sizes = [3, 2, 2]
    book_file = tmp_path / "book.json"
    weights = [[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], [[1.0, -1.0], [0.5, 0.25]]]
    biases = [[[0.1], [-0.2]], [[0.3], [0.0]]]
    # what the book's network2.save wrote: json.dump of this dict, no spaces trimmed
    book_file.write_text(
        json.dumps({"sizes": sizes, "weights": weights, "biases": biases, "cost": "QuadraticCost"})
    )
    net = network2.load(book_file)
    assert net.cost is network2.QuadraticCost and net.sizes == sizes
    assert np.array_equal(net.weights[1], np.array(weights[1]))
    assert net.biases[0].shape == (2, 1)
    net.cost = network2.CrossEntropyCost()  # an instance, as overfitting.py passes
    saved = tmp_path / "saved.json"
    net.save(saved)
    data = json.loads(saved.read_text())
    assert set(data) == {"sizes", "weights", "biases", "cost"}
    assert data["cost"] == "CrossEntropyCost" and data["weights"] == weights
    again = network2.load(saved)
    assert np.array_equal(again.biases[0], net.biases[0])
    (tmp_path / "bad.json").write_text(json.dumps({**data, "cost": "os.system"}))
    with pytest.raises(ModelFileError, match=r"bad\.json: cost"):
        network2.load(tmp_path / "bad.json")
    (tmp_path / "shapes.json").write_text(json.dumps({**data, "sizes": [3, 4, 2]}))
    with pytest.raises(ModelFileError, match=r"shapes\.json.*weights\[0\]"):
        network2.load(tmp_path / "shapes.json")
    bomb = {**data, "sizes": [10**9, 10**9, 2]}  # refused before any weight is drawn
    (tmp_path / "bomb.json").write_text(json.dumps(bomb))
    with pytest.raises(ModelFileError, match=r"bomb\.json: weights\[0\]"):
        network2.load(tmp_path / "bomb.json")


def test_float32_is_an_explicit_choice(path):
    sizes = [5, 4, 3]
    np.random.seed(12)
    net = network2.Network(sizes, dtype="float32")
    data = _pairs(np.random.default_rng(13), 12, sizes)
    net.SGD(data, 2, 4, 0.5)
    assert all(w.dtype == np.float32 for w in net.weights + net.biases)
    np.random.seed(12)
    exact = network2.Network(sizes)
    assert exact.weights[0].dtype == np.float64
    with pytest.raises(ArgumentError, match="dtype"):
        network2.Network(sizes, dtype="float16")


MISTAKES = [
    ("sizes", lambda: network.Network([784]), ArgumentError, "sizes"),
    ("a zero size", lambda: network2.Network([784, 0, 10]), ArgumentError, "sizes"),
    ("sizes a string", lambda: network2.Network("784"), ArgumentError, "sizes"),
]


@pytest.mark.parametrize(("what", "call", "error", "name"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_bad_networks_are_refused_by_name(what, call, error, name):
    with pytest.raises(error, match=name):
        call()


def test_bad_training_calls_are_refused_by_name(capsys):
    np.random.seed(14)
    net = network2.Network([784, 5, 10])
    rng = np.random.default_rng(15)
    good = _pairs(rng, 20, [784, 5, 10])
    digits = _pairs(rng, 5, [784, 5, 10], labels=True)
    small_x = [(np.zeros((783, 1)), y) for _, y in good[:3]]
    flat_x = [(x[:, 0], y) for x, y in good[:3]]
    cases = [
        (lambda: net.SGD(good, 1, 0, 0.5), ArgumentError, "mini_batch_size"),
        (lambda: net.SGD(good, 1, 10, "0.5"), ArgumentError, "eta"),
        (lambda: net.SGD(good, 1, 10, float("nan")), ArgumentError, "eta"),
        (lambda: net.SGD(good, -1, 10, 0.5), ArgumentError, "epochs"),
        (lambda: net.SGD(good, 1, 10, 0.5, lmbda=-1), ArgumentError, "lmbda"),
        (lambda: net.SGD([], 1, 10, 0.5), ArgumentError, "training_data.*empty"),
        (lambda: net.SGD(iter(good), 1, 10, 0.5), ArgumentError, "list_iterator"),
        (lambda: net.SGD(digits, 1, 10, 0.5), ShapeError, "training_data.*one-hot"),
        (lambda: net.SGD(small_x, 1, 10, 0.5), ShapeError, "784x1.*783"),
        (lambda: net.SGD(flat_x, 1, 10, 0.5), ShapeError, r"784x1.*\(784,\)"),
        (lambda: net.accuracy(good), ShapeError, "convert=True"),
        (lambda: net.accuracy(digits, convert=True), ShapeError, "convert"),
        (lambda: net.total_cost(digits, 0.0), ShapeError, "convert"),
        (
            lambda: net.SGD(good, 1, 10, 0.5, monitor_evaluation_accuracy=True),
            ArgumentError,
            "evaluation_data",
        ),
        (lambda: net.feedforward(np.zeros(784)), ShapeError, "784x1"),
        (lambda: net.backprop(np.zeros((784, 1)), 3), ShapeError, "backprop: y"),
        (lambda: network.Network([784, 5, 10]).evaluate(good), ShapeError, "test_data"),
    ]
    before = [w.copy() for w in net.weights]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()
    assert all(np.array_equal(a, b) for a, b in zip(before, net.weights, strict=True))
    assert [type(p[1]) for p in good] == [np.ndarray] * 20  # the user's data untouched


def test_a_cost_of_ones_own_is_compiled_from_its_delta():
    class Halved(network2.CrossEntropyCost):  # a reader's cost: half the error
        @staticmethod
        def delta(z, a, y):
            return 0.5 * (a - y)

        @staticmethod
        def fn(a, y):
            return 0.5 * network2.CrossEntropyCost.fn(a, y)

    sizes = [5, 4, 3]
    np.random.seed(16)
    net = network2.Network(sizes, cost=Halved)
    batch = _pairs(np.random.default_rng(17), 6, sizes)
    want_w, want_b = reference.seed_sgd_step(net.weights, net.biases, batch, 0.25, 0.0, 6, False)
    net.SGD(list(batch), 1, 6, 0.5)  # half the error at twice the rate: the same step
    for got, want in zip(net.weights + net.biases, want_w + want_b, strict=True):
        assert _relative(got, want) < 1e-12
    full = network2.CrossEntropyCost.fn
    outputs = [reference_forward(net, x) for x, _ in batch]
    want = sum(0.5 * full(a, y) for a, (_, y) in zip(outputs, batch, strict=True)) / 6
    assert abs(net.total_cost(batch, 0.0) - want) < 1e-12 * want

    class Numpyish(network2.CrossEntropyCost):
        @staticmethod
        def delta(z, a, y):
            return np.clip(a - y, -1, 1)  # NumPy on a symbolic variable

    net.cost = Numpyish
    with pytest.raises(BackendError, match=r"cost\.delta"):
        net.SGD(list(batch), 1, 6, 0.5)


def test_the_books_pickle_is_read_where_the_books_loader_looks(tmp_path, monkeypatch):
    rng = np.random.default_rng(18)

    def split(n):
        return (rng.integers(0, 256, (n, 784)) / 256).astype(np.float32), rng.integers(0, 10, n)

    (tmp_path / "data").mkdir()
    with gzip.open(tmp_path / "data" / "mnist.pkl.gz", "wb") as handle:
        pickle.dump((split(7), split(3), split(2)), handle)
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")  # the book's scripts run from src/ or fig/
    (train_x, train_y), validation, test = mnist_loader.load_data()
    assert train_x.shape == (7, 784) and len(validation[0]) == 3 and len(test[1]) == 2
    assert train_y.dtype == np.int64
    training, _, _ = mnist_loader.load_data_wrapper()
    assert len(training) == 7 and training[0][1].shape == (10, 1)
    assert np.array_equal(training[0][0][:, 0], train_x[0])
