"""The ``convnet`` command: parses arguments, then calls the public API (run folders are
:mod:`convnet.runs`), nothing more."""

from __future__ import annotations

import argparse
import json
import platform
import signal
import sys
import threading
from pathlib import Path

import numpy as np

from convnet import __version__, checkpoint, optimizers, plots, runs
from convnet import backend as backends
from convnet.book import RECIPES, layers_for
from convnet.callbacks import Callback, EarlyStopping, EtaSchedule, Position
from convnet.data import book_format
from convnet.data.download import download_mnist
from convnet.data.expand import default_cache, load_expanded
from convnet.data.mnist import load_mnist
from convnet.errors import ArgumentError, ConvnetError
from convnet.history import History
from convnet.images import load_image
from convnet.network import Network, load
from convnet.spec import parse

DEFAULT_MOMENTUM = {"sgd": 0.0, "nesterov": 0.9, "adam": 0.0}
DEFAULT_ETA = {"adam": 0.001}  # sgd and nesterov: the book's eta for the chosen net


def _data(args: argparse.Namespace):

    return load_mnist(args.data)


# -- train --------------------------------------------------------------------------------
def _layers(args: argparse.Namespace, mbs: int):
    if args.layers:
        return parse(args.layers, mbs)
    return layers_for(args.net, mbs)


class RunInterruptedError(Exception):
    """Ctrl-C (or SIGTERM) during training; says where, and how to continue."""

    def __init__(self, run_dir: Path, position: Position) -> None:
        where = (
            f"at epoch {position.epoch}, mini-batch {position.batches}"
            if position.epoch is not None
            else "before the first epoch"
        )
        saved = checkpoint.path_in(run_dir)
        if saved.exists() and position.finished is not None:
            kept = f"checkpoint of epoch {position.finished} kept in {saved}"
        elif saved.exists():
            kept = f"the checkpoint in {saved} is as it was"
        else:
            kept = "no checkpoint yet"
        super().__init__(
            f"Interrupted {where}; {kept}. Resume with: convnet train --resume {run_dir}"
        )


def _train_one(
    args,
    run_dir: Path,
    seed: int,
    training,
    validation,
    test,
    hyper: dict,
    resume: tuple | None = None,
) -> Network:
    mbs = args.mini_batch_size
    if resume is not None:
        net, state = resume
    else:
        net = Network(_layers(args, mbs), mbs, backend=args.backend, device=args.device, seed=seed)
        state = None
    if not args.quiet:
        net.summary()
    arguments = {k: v for k, v in vars(args).items() if k not in ("func", "resume")}
    position = Position()
    callbacks: list[Callback] = [position]
    if args.eta_schedule is not None:
        callbacks.append(EtaSchedule(args.eta_schedule))
    if args.patience is not None:
        callbacks.append(EarlyStopping(args.patience))
    try:
        runs.train(
            net,
            run_dir,
            training,
            validation,
            test,
            epochs=hyper["epochs"],
            optimizer=_optimizer(hyper),
            lmbda=hyper["lmbda"],
            callbacks=callbacks,
            shuffle=args.shuffle,
            verbose=not args.quiet,
            state=state,
            arguments=arguments | {"out": str(run_dir)},
            checkpoint_every=args.checkpoint_every,
            details=hyper | {"seed": seed},
        )
    except KeyboardInterrupt:
        raise RunInterruptedError(run_dir, position) from None
    return net


def _optimizer(hyper: dict) -> optimizers.Optimizer:
    """``--optimizer sgd|nesterov|adam`` with ``--eta`` and ``--momentum``."""
    if hyper["optimizer"] == "adam":
        if hyper["momentum"]:
            raise ArgumentError(
                f"--momentum: Adam keeps its own moments; --momentum is for sgd and nesterov. "
                f"Received: --optimizer adam --momentum {hyper['momentum']}."
            )
        return optimizers.Adam(hyper["eta"])
    return optimizers.SGD(hyper["eta"], hyper["momentum"], hyper["optimizer"] == "nesterov")


def cmd_train(args: argparse.Namespace) -> int:

    resume = None
    if args.resume:
        net, state, stored = checkpoint.load(args.resume, backend=args.backend, device=args.device)
        stored = {"optimizer": "sgd"} | stored  # run folders from before --optimizer
        args = argparse.Namespace(**(stored | {"resume": args.resume, "func": args.func}))
        resume = (net, state)
        if not args.quiet:
            print(f"Resuming {args.out} at epoch {state.epoch}")
    elif not args.out:
        raise ArgumentError("train: expected --out RUN_DIR (or --resume RUN_DIR).")
    else:
        runs.refuse_to_overwrite(Path(args.out), args.overwrite)
    for flag in ("epochs", "limit", "ensemble", "checkpoint_every"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            name = "--" + flag.replace("_", "-")
            raise ArgumentError(f"{name}: expected a whole number >= 1. Received: {value}.")
    if resume is not None and (args.ensemble or 1) > 1:
        raise ArgumentError(
            "--resume: ensembles are resumed member by member (--resume RUN/member-K)."
        )

    recipe = RECIPES.get(args.net) if not args.layers else None
    book_eta = recipe.eta if recipe else 0.1
    momentum = args.momentum if args.momentum is not None else DEFAULT_MOMENTUM[args.optimizer]
    hyper = {
        "net": args.layers or args.net,
        "epochs": args.epochs if args.epochs is not None else (recipe.epochs if recipe else 10),
        "optimizer": args.optimizer,
        "eta": args.eta if args.eta is not None else DEFAULT_ETA.get(args.optimizer, book_eta),
        "lmbda": args.lmbda if args.lmbda is not None else (recipe.lmbda if recipe else 0.0),
        "mini_batch_size": args.mini_batch_size,
        "momentum": momentum,
        "limit": args.limit,
        "expanded": bool(args.expanded or (recipe and recipe.expanded)),
    }
    _optimizer(hyper)  # a bad --optimizer/--eta/--momentum fails before any data is read
    training, validation, test = _data(args)
    if hyper["expanded"]:
        training = load_expanded(training)
    if args.limit is not None:
        training = (training[0][: args.limit], training[1][: args.limit])
    run_dir = Path(args.out)
    members = args.ensemble or 1
    nets = []
    for k in range(members):
        folder = runs.member_dir(run_dir, k, members)
        if members > 1 and not args.quiet:
            print(f"\n== ensemble member {k + 1} of {members} (seed {args.seed + k}) ==")
        nets.append(
            _train_one(args, folder, args.seed + k, training, validation, test, hyper, resume)
        )
        if not args.quiet:
            print(f"Saved {folder}/model.npz, model.json, history, curves.png, errors.png")
    if members > 1:
        result = runs.write_ensemble(run_dir, nets, test)
        for k, accuracy in enumerate(result["members"]):
            print(f"member {k}: test accuracy {accuracy:.2%}")
        print(f"voted ({members} nets): test accuracy {result['voted']:.2%}")
    return 0


# -- the other commands -------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    net = load(args.model, backend=args.backend, device=args.device)
    _, _, (x, y) = _data(args)
    predicted = net.predict(x)
    matrix = np.zeros((net.n_classes, net.n_classes), dtype=np.int64)
    np.add.at(matrix, (y, predicted), 1)
    print(
        f"test accuracy: {np.mean(predicted == y):.2%} ({int((predicted == y).sum())} of {len(y)})"
    )
    print("confusion matrix (rows: true label, columns: predicted):")
    print("     " + " ".join(f"{c:>5}" for c in range(net.n_classes)))
    for label, row in enumerate(matrix):
        print(f"{label:>4} " + " ".join(f"{v:>5}" for v in row))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:

    net = load(args.model, backend=args.backend, device=args.device)
    images = np.stack([load_image(path) for path in args.images])
    probabilities = net.predict_proba(images)
    for path, p in zip(args.images, probabilities, strict=True):
        print(f"{path}: {int(p.argmax())} (probability {p.max():.3f})")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:

    run_dir = Path(args.run_dir)
    try:
        history = History.from_dict(json.loads((run_dir / "history.json").read_text()))
    except FileNotFoundError:
        raise ConvnetError(f"{run_dir}: no history.json here; is it a run folder?") from None
    print(plots.curves(history, run_dir / "curves.png"))
    if (run_dir / "model.json").exists():
        _, _, test = _data(args)
        net = load(run_dir)
        print(plots.errors(test[0], test[1], net.predict(test[0]), run_dir / "errors.png"))
    return 0


def cmd_expand(args: argparse.Namespace) -> int:

    out = Path(args.out).expanduser() if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise ArgumentError(
            f"--out: {out} already exists; it was left as it is. Pass --overwrite to replace it."
        )
    training, validation, test = _data(args)
    if args.limit is not None:
        if args.limit < 1:
            raise ArgumentError(f"--limit: expected a positive integer. Received: {args.limit}.")
        training = (training[0][: args.limit], training[1][: args.limit])
    expanded = load_expanded(training)
    if out is None:
        print(
            f"{len(expanded[0]):,} training images (the book's expansion) cached at "
            f"{default_cache(len(training[0]))}. For the book's conv.py, write its file with: "
            "convnet expand-mnist --out ../data/mnist_expanded.pkl.gz"
        )
        return 0
    book_format.write(out, (expanded, validation, test))
    print(
        f"{len(expanded[0]):,} training images (the book's expansion), with the validation "
        f"and test sets, written to {out}; load them with load_data_shared({str(out)!r})"
    )
    return 0


def cmd_download(args: argparse.Namespace) -> int:

    folder = download_mnist(args.to, progress=None if not args.quiet else False)
    print(f"MNIST is in {folder} (sha256 verified)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import numpy
    import pytensor

    if args.run_dir is not None:
        net = load(args.run_dir, backend=args.backend, device=args.device)
        print(f"{args.run_dir}: mini-batch {net.mini_batch_size}")
        net.summary()
        return 0
    print(
        f"convnet {__version__}, pytensor {pytensor.__version__}, numpy {numpy.__version__}, "
        f"python {platform.python_version()}"
    )
    if backends.jax_available():
        import jax

        print(f"jax {jax.__version__}: devices {', '.join(str(d) for d in jax.devices())}")
    else:
        print("jax: not installed")
    chosen = backends.resolve(args.backend, args.device)
    print(f"backend: {chosen.describe()}")
    try:
        from threadpoolctl import threadpool_info

        for lib in threadpool_info():
            print(
                f"{lib['internal_api']}: {lib.get('architecture')} {lib['num_threads']} threads "
                f"({Path(lib['filepath']).name})"
            )
    except ImportError:
        pass
    return 0


# -- parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnet", description="Train and use the book's networks."
    )
    parser.add_argument("--version", action="version", version=f"convnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", help="MNIST folder or mnist.pkl.gz (default: $CONVNET_DATA)")
        p.add_argument("--backend", choices=["auto", "c", "numba", "jax"])
        p.add_argument("--device", choices=["cpu", "gpu"])

    train = sub.add_parser("train", help="train a network and save it with its history and plots")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--net", choices=list(RECIPES), default="relu", help="a chapter-6 network")
    group.add_argument("--layers", help="e.g. conv:20:5:relu,fc:100:relu,softmax")
    train.add_argument("--epochs", type=int)
    train.add_argument("--mini-batch-size", type=int, default=10)
    train.add_argument("--eta", type=float)
    train.add_argument("--lmbda", type=float)
    train.add_argument(
        "--optimizer",
        choices=["sgd", "nesterov", "adam"],
        default="sgd",
        help="the update rule (default sgd, the book's)",
    )
    train.add_argument(
        "--momentum",
        type=float,
        help="momentum for sgd (default 0) and nesterov (default 0.9)",
    )
    train.add_argument(
        "--patience", type=int, help="early stopping after N epochs without improvement"
    )
    train.add_argument(
        "--eta-schedule", type=int, help="halve eta after N stalled epochs (stop at eta/128)"
    )
    train.add_argument(
        "--shuffle", action="store_true", help="reshuffle every epoch (the book did not)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--limit", type=int, help="train on the first N training images")
    train.add_argument("--expanded", action="store_true", help="the book's expanded training set")
    train.add_argument(
        "--ensemble", type=int, help="train N nets with seeds seed..seed+N-1 and vote"
    )
    train.add_argument("--quiet", action="store_true")
    train.add_argument("--out", help="run folder to write")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        default=1,
        metavar="N",
        help="write RUN_DIR/checkpoint.npz every N epochs (default 1)",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the model in an --out folder that already has one",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run with its original arguments",
    )
    common(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser(
        "evaluate", help="test accuracy and confusion matrix of a saved model"
    )
    evaluate.add_argument("model", help="run folder or model.npz")
    common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify PNG/JPEG images of digits")
    predict.add_argument("model", help="run folder or model.npz")
    predict.add_argument("images", nargs="+")
    common(predict)
    predict.set_defaults(func=cmd_predict)

    plot = sub.add_parser("plot", help="redraw curves.png and errors.png of a run")
    plot.add_argument("run_dir")
    common(plot)
    plot.set_defaults(func=cmd_plot)

    expand = sub.add_parser("expand-mnist", help="build the book's expanded training set")
    expand.add_argument(
        "--out",
        help="also write the book's file here (.pkl.gz as the book's expand_mnist.py "
        "wrote it, or .npz), e.g. ../data/mnist_expanded.pkl.gz",
    )
    expand.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    expand.add_argument("--limit", type=int, help="expand only the first N training images")
    common(expand)
    expand.set_defaults(func=cmd_expand)

    download = sub.add_parser("download", help="fetch and verify a dataset (mnist)")
    download.add_argument("dataset", choices=["mnist"])
    download.add_argument("--to", help="folder (default ~/.cache/convnet/mnist)")
    download.add_argument("--quiet", action="store_true")
    download.set_defaults(func=cmd_download)

    info = sub.add_parser(
        "info", help="versions, backend, device, BLAS and threads; or a run folder's layers"
    )
    info.add_argument("run_dir", nargs="?", help="a run folder: print its network's summary")
    common(info)
    info.set_defaults(func=cmd_info)
    return parser


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM ends a run the way Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    terminated = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except ConvnetError as exc:  # our errors already say what is wrong: no traceback
        print(f"convnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (RunInterruptedError, KeyboardInterrupt) as exc:
        message = str(exc) if isinstance(exc, RunInterruptedError) else "Interrupted."
        print(f"\nconvnet {args.command}: {message}", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report an interrupted program
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, terminated)


if __name__ == "__main__":
    sys.exit(main())
