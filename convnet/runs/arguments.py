"""A run's arguments: the table of what ``convnet train`` takes (a flag is an argument's
spelling on the command line), their defaults and the book's values for ``--net``, and
the checks every argument passes, typed, stored in a run folder, or a sweep's grid point.

The command's parser, ``--help``, the check of the arguments a checkpoint stored and
``--resume``'s rules all read :data:`TRAIN_FLAGS`; nothing here parses a command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from convnet import optimizers
from convnet.book import RECIPES, layers_for
from convnet.errors import ArgumentError, check_number
from convnet.fields import Fields
from convnet.layer_spec import parse


class Arguments(SimpleNamespace):
    """One run's arguments, an attribute per :data:`TRAIN_FLAGS` name (None: not given)."""


DEFAULT_MOMENTUM = {"sgd": 0.0, "nesterov": 0.9, "adam": 0.0}
# Adam's own default; sgd and nesterov: the book's eta for the chosen net times
# (1 - momentum), so that momentum's steady step eta / (1 - momentum) is the book's step.
DEFAULT_ETA = {"adam": 0.001}


@dataclass(frozen=True)
class Flag:
    """One ``convnet train`` option: the parser, ``--help``, the check of the arguments a
    checkpoint stored, and what ``--resume`` may change are all read from this table."""

    name: str
    kind: type
    help: str
    default: Any = None  # applied when the flag is not given (None: decided in cmd_train)
    choices: tuple[str, ...] | None = None
    low: int = 1  # the whole numbers accepted (int flags)
    high: int = 2**31 - 1
    metavar: str | None = None
    on_resume: bool = False  # may be given with --resume
    per_invocation: bool = False  # how a command shows and runs: never taken from a stored run


TRAIN_FLAGS = (
    Flag("net", str, "a chapter-6 network of the book", "relu", tuple(RECIPES)),
    Flag("layers", str, "your own network instead, e.g. conv:20:5:relu,fc:100:relu,softmax"),
    Flag(
        "epochs",
        int,
        "epochs to train (default: the book's for --net, e.g. 60; 10 for --layers); "
        "with --resume: train the run on to this many",
        metavar="N",
        on_resume=True,
    ),
    Flag("mini_batch_size", int, "examples per gradient step", 10, metavar="N"),
    Flag(
        "eta",
        float,
        "step size (default: the book's for --net, times 1 - momentum with momentum; "
        "0.001 for adam)",
    ),
    Flag("lmbda", float, "L2 regularization (default: the book's for --net; 0 for --layers)"),
    Flag(
        "optimizer", str, "the update rule (sgd is the book's)", "sgd", ("sgd", "nesterov", "adam")
    ),
    Flag("momentum", float, "momentum (default: 0 for sgd, 0.9 for nesterov)"),
    Flag(
        "patience",
        int,
        "stop early after N epochs without a better validation accuracy (default: never)",
        metavar="N",
    ),
    Flag(
        "eta_schedule",
        int,
        "halve eta after N epochs without improvement, stop at eta/128 (default: fixed eta)",
        metavar="N",
    ),
    Flag("shuffle", bool, "reshuffle the training set every epoch (the book did not)"),
    Flag("seed", int, "seed of the weights, dropout and shuffling", 0, low=0, high=2**63 - 1),
    Flag("limit", int, "train on the first N training images (default: all 50,000)", metavar="N"),
    Flag("expanded", bool, "train on the book's expanded training set (250,000 images)"),
    Flag(
        "ensemble", int, "train N nets with seeds seed..seed+N-1 and vote (default: 1)", metavar="N"
    ),
    Flag(
        "workers",
        int,
        "with --ensemble: train N members at a time, each in a process of its own on a core "
        "of its own (default: one after another)",
        metavar="N",
        on_resume=True,
        per_invocation=True,
    ),
    Flag(
        "cluster",
        str,
        "with --ensemble: train the members on the Dask cluster whose scheduler is at ADDR "
        "(e.g. tcp://10.0.0.5:8786; pip install 'convnet[cluster]')",
        metavar="ADDR",
        on_resume=True,
        per_invocation=True,
    ),
    Flag(
        "together",
        bool,
        "with --ensemble: train the members as one program (stacked weights, one batched "
        "GEMM per layer; JAX backend), for GPUs; on a CPU core it measured slower than one "
        "after another",
        on_resume=True,
        per_invocation=True,
    ),
    Flag("out", str, "the run folder to write", metavar="RUN_DIR"),
    Flag(
        "checkpoint_every",
        int,
        "write RUN_DIR/checkpoint.npz every N epochs",
        1,
        metavar="N",
        on_resume=True,
    ),
    Flag("overwrite", bool, "replace the model in an --out folder that already has one"),
    Flag("quiet", bool, "print only errors and results", on_resume=True, per_invocation=True),
    Flag(
        "data",
        str,
        "MNIST folder or mnist.pkl.gz (default: $CONVNET_DATA, then the cache)",
        on_resume=True,
    ),
    Flag(
        "backend",
        str,
        "PyTensor backend (default: $CONVNET_BACKEND, else auto)",
        choices=("auto", "c", "numba", "jax"),
        on_resume=True,
        per_invocation=True,
    ),
    Flag(
        "device",
        str,
        "cpu or gpu (default: $CONVNET_DEVICE, else cpu)",
        choices=("cpu", "gpu"),
        on_resume=True,
        per_invocation=True,
    ),
)


PER_INVOCATION = tuple(f.name for f in TRAIN_FLAGS if f.per_invocation)


def with_defaults(values: dict[str, Any]) -> Arguments:
    return Arguments(
        **{
            f.name: values.get(f.name) if values.get(f.name) is not None else f.default
            for f in TRAIN_FLAGS
        }
    )


def flag_name(name: str) -> str:
    """``mini_batch_size`` -> ``--mini-batch-size``."""
    return "--" + name.replace("_", "-")


def stored_arguments(stored: Fields) -> dict[str, Any]:
    """The arguments a checkpoint holds, each checked as the parser checks it."""
    values: dict[str, Any] = {}
    for flag in TRAIN_FLAGS:
        if flag.kind is bool:
            values[flag.name] = bool(stored.flag(flag.name, optional=True))
        elif flag.kind is int:
            values[flag.name] = stored.integer(
                flag.name, low=flag.low, high=flag.high, optional=True
            )
        elif flag.kind is float:
            values[flag.name] = stored.number(flag.name, optional=True)
        else:
            values[flag.name] = stored.text(flag.name, choices=flag.choices, optional=True)
    return values


def resumed_arguments(stored: Fields, given: dict[str, Any], **fixed: Any) -> Arguments:
    """A stored run's arguments, checked, with this command's per-invocation flags and the
    flags typed on it (those --resume allows), and ``fixed`` (where it lives, its size)."""
    values = stored_arguments(stored) | {name: None for name in PER_INVOCATION}
    return with_defaults(values | given | fixed | {"overwrite": False})


def network_layers(args: Arguments, mbs: int):
    if args.layers:
        return parse(args.layers, mbs)
    return layers_for(args.net, mbs)


def build_optimizer(hyper: dict) -> optimizers.Optimizer:
    """``--optimizer sgd|nesterov|adam`` with ``--eta`` and ``--momentum``."""
    if hyper["optimizer"] == "adam":
        if hyper["momentum"]:
            raise ArgumentError(
                f"--momentum: Adam keeps its own moments; --momentum is for sgd and nesterov. "
                f"Received: --optimizer adam --momentum {hyper['momentum']}."
            )
        return optimizers.Adam(hyper["eta"])
    return optimizers.SGD(hyper["eta"], hyper["momentum"], hyper["optimizer"] == "nesterov")


def hyper_parameters(args: Arguments) -> dict[str, Any]:
    """The run's hyper-parameters: the flags, else the book's values for ``--net``."""
    for flag in TRAIN_FLAGS:
        value = getattr(args, flag.name)
        if flag.kind is int and value is not None:
            check_number(
                value,
                flag_name(flag.name),
                integer=True,
                low=flag.low,
                inclusive=True,
                high=flag.high + 1,
            )
    if args.momentum is not None:  # checked before the default eta is derived from it
        check_number(args.momentum, "--momentum", inclusive=True, high=1.0)
    recipe = RECIPES.get(args.net) if not args.layers else None
    book_eta = recipe.eta if recipe else 0.1
    momentum = args.momentum if args.momentum is not None else DEFAULT_MOMENTUM[args.optimizer]
    hyper = {
        "net": args.layers or args.net,
        "epochs": args.epochs if args.epochs is not None else (recipe.epochs if recipe else 10),
        "optimizer": args.optimizer,
        "eta": args.eta
        if args.eta is not None
        else DEFAULT_ETA.get(args.optimizer, book_eta * (1 - momentum)),
        "lmbda": args.lmbda if args.lmbda is not None else (recipe.lmbda if recipe else 0.0),
        "mini_batch_size": args.mini_batch_size,
        "momentum": momentum,
        "limit": args.limit,
        "expanded": bool(args.expanded or (recipe and recipe.expanded)),
    }
    check_number(hyper["lmbda"], "--lmbda", inclusive=True)
    build_optimizer(hyper)  # a bad --optimizer/--eta/--momentum fails before any data is read
    return hyper


def check_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a run with these ``convnet train`` flags trains with; a bad flag
    or a misspelt ``layers`` fails here, before any data is read."""
    for flag in TRAIN_FLAGS:  # the types the parser would have given them
        value = arguments.get(flag.name)
        if value is None:
            continue
        kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[flag.kind]
        if not isinstance(value, kinds) or (flag.kind is not bool and isinstance(value, bool)):
            raise ArgumentError(
                f"{flag_name(flag.name)}: expected {flag.kind.__name__}. Received: {value!r}."
            )
        if flag.choices and value not in flag.choices:
            raise ArgumentError(
                f"{flag_name(flag.name)}: expected one of {', '.join(flag.choices)}. "
                f"Received: {value!r}."
            )
    args = with_defaults(arguments)
    hyper = hyper_parameters(args)
    if args.layers:
        network_layers(args, args.mini_batch_size)
    return hyper
