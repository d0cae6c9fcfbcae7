"""The ``convnet`` command: parses arguments, then calls the public API (``train`` is
:mod:`convnet.runs.train`, run folders are :mod:`convnet.runs.folder`), nothing more."""

from __future__ import annotations

import argparse
import errno
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from convnet import __version__, config, fields, interrupts, plots
from convnet.data import book_format
from convnet.data.download import download_mnist
from convnet.data.expand import default_cache, load_expanded
from convnet.data.mnist import find_mnist, load_mnist
from convnet.ensemble import vote
from convnet.errors import ArgumentError, ConvnetError, check_number
from convnet.images import load_image
from convnet.network import Network, load
from convnet.runs import arguments as run_arguments
from convnet.runs import folder as run_folder
from convnet.runs import sweep as sweeps
from convnet.runs import train as training
from convnet.runtime import backend as backends
from convnet.runtime import kernel

# Writing a file can fail for reasons the user fixes outside convnet; saves are atomic, so
# the previous file is whole and the message says so.
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def typed_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The train flags typed on this command line (every flag's parser default is None;
    a command without a flag has it as None)."""
    values = {f.name: getattr(args, f.name, None) for f in run_arguments.TRAIN_FLAGS}
    return {
        name: value for name, value in values.items() if value is not None and value is not False
    }


def cmd_train(args: argparse.Namespace) -> int:
    return training.train(typed_flags(args), args.resume)


SWEEP_OWN = ("workers", "cluster", "out", "quiet")  # how and where a sweep runs
NOT_SWEPT = ("ensemble", "overwrite")  # a sweep's trials are single runs, in new folders


def cmd_sweep(args: argparse.Namespace) -> int:
    typed = typed_flags(args)
    fixed = {name: value for name, value in typed.items() if name not in SWEEP_OWN}
    if args.resume:
        given = [run_arguments.flag_name(n) for n in fixed] + [
            f for f, v in (("--grid", args.grid), ("--repeats", args.repeats)) if v is not None
        ]
        if given:
            raise ArgumentError(
                f"--resume {args.resume}: runs the trials planned there, so only --workers, "
                f"--cluster and --quiet may be given with it. Received: {' '.join(given)}."
            )
        rows = sweeps.sweep(
            args.resume,
            resume=True,
            workers=args.workers,
            cluster=args.cluster,
            verbose=not args.quiet,
        )
        return 0 if any(row["status"] == "finished" for row in rows) else 1
    if not args.out:
        raise ArgumentError("sweep: expected --out DIR (or --resume DIR).")
    rows = sweeps.sweep(
        args.out,
        sweeps.parse_grid(args.grid or []),
        repeats=1 if args.repeats is None else args.repeats,
        workers=args.workers,
        cluster=args.cluster,
        verbose=not args.quiet,
        **fixed,
    )
    return 0 if any(row["status"] == "finished" for row in rows) else 1


# -- the other commands -------------------------------------------------------------------
def _models(args: argparse.Namespace) -> list[Network]:
    nets = run_folder.load_models(args.model, args.member, backend=args.backend, device=args.device)
    if len(nets) > 1 and not getattr(args, "quiet", False):
        print(f"{args.model}: an ensemble of {len(nets)} nets; their vote answers.")
    return nets


def cmd_evaluate(args: argparse.Namespace) -> int:
    nets = _models(args)
    _, _, (x, y) = load_mnist(args.data)
    probabilities = [net.predict_proba(x) for net in nets]
    predicted = vote(probabilities) if len(nets) > 1 else probabilities[0].argmax(1)
    if len(nets) > 1:
        for k, p in enumerate(probabilities):
            print(f"member {k}: test accuracy {np.mean(p.argmax(1) == y):.2%}")
    n_classes = nets[0].n_classes
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y, predicted), 1)
    print(
        f"test accuracy: {np.mean(predicted == y):.2%} ({int((predicted == y).sum())} of {len(y)})"
    )
    print("confusion matrix (rows: true label, columns: predicted):")
    print("     " + " ".join(f"{c:>5}" for c in range(n_classes)))
    for label, row in enumerate(matrix):
        print(f"{label:>4} " + " ".join(f"{v:>5}" for v in row))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    nets = _models(args)
    images = np.stack([load_image(path) for path in args.images])
    probabilities = [net.predict_proba(images) for net in nets]
    if len(nets) == 1:
        for path, p in zip(args.images, probabilities[0], strict=True):
            print(f"{path}: {int(p.argmax())} (probability {p.max():.3f})")
        return 0
    voted = vote(probabilities)
    for index, (path, label) in enumerate(zip(args.images, voted, strict=True)):
        votes = sum(int(p[index].argmax() == label) for p in probabilities)
        print(f"{path}: {int(label)} ({votes} of {len(nets)} votes)")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:

    run_dir = Path(args.run_dir)
    history = fields.history(
        fields.read_json(run_dir / "history.json", "history file", hint=" Is it a run folder?")
    )
    print(plots.curves(history, run_dir / "curves.png"))
    if (run_dir / "model.json").exists():
        _, _, test = load_mnist(args.data)
        net = load(run_dir)
        print(plots.errors(test[0], test[1], net.predict(test[0]), run_dir / "errors.png"))
    return 0


def cmd_expand(args: argparse.Namespace) -> int:

    out = Path(args.out).expanduser() if args.out else None
    kind = run_folder.special_kind(out) if out is not None else None
    if kind or (out is not None and out.is_dir()):
        raise ArgumentError(
            f"--out {out}: is {kind or 'a folder'}, not a file convnet writes; nothing was written."
        )
    if out is not None:
        book_format.writable(out)  # a suffix it can't write fails before the work
    if out is not None and out.exists() and not args.overwrite:
        raise ArgumentError(
            f"--out: {out} already exists; it was left as it is. Pass --overwrite to replace it."
        )
    training, validation, test = load_mnist(args.data)
    if args.limit is not None:
        check_number(args.limit, "--limit", integer=True)
        training = (training[0][: args.limit], training[1][: args.limit])
    expanded = load_expanded(training)
    if out is None:
        print(
            f"{len(expanded[0]):,} training images (the book's expansion) cached at "
            f"{default_cache(training)}. For the book's conv.py, write its file with: "
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
        nets = run_folder.load_models(args.run_dir, backend=args.backend, device=args.device)
        for k, net in enumerate(nets):
            member = f" member {k} of {len(nets)}" if len(nets) > 1 else ""
            print(f"{args.run_dir}{member}: mini-batch {net.mini_batch_size}")
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
    print(f"data: {_data_line(args.data)}")
    cache = config.cache_root()
    print(f"cache: {cache} ({_size_of(cache)}; set CONVNET_CACHE to move it)")
    if chosen.name == "jax" and chosen.device == "cpu":
        why = kernel.why_not()
        print(f"C++ conv-pool kernel: {'active' if why is None else 'not used: ' + why}")
    else:
        print(
            f"C++ conv-pool kernel: not used (it serves JAX on the CPU; backend is {chosen.name})"
        )
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


def _data_line(path: str | None) -> str:
    """Where MNIST was found (and in which form), or where convnet looked."""
    try:
        found = find_mnist(path)
    except ConvnetError as exc:
        return f"MNIST not found ({exc})"
    return f"MNIST in {found}"


def _size_of(folder: Path) -> str:
    if not folder.is_dir():
        return "not created yet"
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return f"{total / 2**20:,.1f} MB"


# -- parser -------------------------------------------------------------------------------
def _add_train_flags(
    parser: argparse.ArgumentParser,
    *,
    skip: tuple[str, ...] = (),
    helps: dict[str, str] | None = None,
    metavars: dict[str, str] | None = None,
    with_defaults: bool = False,
) -> None:
    """``convnet train``'s flags (:data:`~convnet.runs.arguments.TRAIN_FLAGS`), --net and
    --layers exclusive."""
    choice = parser.add_mutually_exclusive_group()
    for flag in run_arguments.TRAIN_FLAGS:
        if flag.name in skip:
            continue
        where = choice if flag.name in ("net", "layers") else parser
        help_text = (helps or {}).get(flag.name, flag.help)
        if with_defaults and flag.default is not None:
            help_text += f" (default: {flag.default})"
        if flag.kind is bool:
            where.add_argument(
                run_arguments.flag_name(flag.name), action="store_true", help=help_text
            )
        else:
            where.add_argument(
                run_arguments.flag_name(flag.name),
                type=flag.kind,
                choices=flag.choices,
                metavar=(metavars or {}).get(flag.name, flag.metavar),
                help=help_text,
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convnet", description="Train and use the book's networks."
    )
    parser.add_argument("--version", action="version", version=f"convnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, data: bool = True) -> None:
        """--data (for commands that read MNIST), --backend, --device."""
        for flag in run_arguments.TRAIN_FLAGS:
            if flag.name in ("backend", "device") or (data and flag.name == "data"):
                p.add_argument(
                    run_arguments.flag_name(flag.name), choices=flag.choices, help=flag.help
                )

    def member(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--member",
            type=int,
            metavar="K",
            help="for an ensemble's folder: use member K alone (default: the members' vote)",
        )

    train = sub.add_parser(
        "train",
        help="train a network and save it with its history and plots",
        description="Train one of the book's networks (or your own) into a run folder: "
        "model, checkpoint, history and two pictures.",
    )
    _add_train_flags(train, with_defaults=True)
    train.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run with its original arguments "
        "(only --epochs, --checkpoint-every, --quiet, --data, --backend, --device may change)",
    )
    train.set_defaults(func=cmd_train)

    sweep = sub.add_parser(
        "sweep",
        help="train a network at every point of a grid of hyper-parameters",
        description="Train one network at every point of a grid (each --grid NAME=V1,V2 "
        "multiplies the trials), --repeats seeds each (--repeats alone: one network's "
        "spread over seeds), one run folder per trial, with "
        "DIR/sweep.csv and DIR/sweep.png. A trial that fails is recorded and the sweep goes "
        "on; --resume DIR trains the trials not yet finished.",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        metavar="NAME=V1,V2",
        help=f"a swept parameter and its values; NAME is one of {', '.join(sweeps.SWEPT)}",
    )
    sweep.add_argument("--repeats", type=int, metavar="R", help="seeds per grid point (default: 1)")
    sweep_help = {
        "workers": "train N trials at a time, each in a process of its own on a core of its own",
        "cluster": "train the trials on the Dask cluster whose scheduler is at ADDR "
        "(e.g. tcp://10.0.0.5:8786; pip install 'convnet[cluster]')",
        "out": "the sweep folder to write",
        "seed": "the first trial's seed; repeats take the next ones (default: 0)",
    }
    _add_train_flags(sweep, skip=NOT_SWEPT, helps=sweep_help, metavars={"out": "DIR"})
    sweep.add_argument(
        "--resume",
        metavar="DIR",
        help="train the trials of the sweep in DIR not yet finished (with --workers or "
        "--cluster only)",
    )
    sweep.set_defaults(func=cmd_sweep)

    evaluate = sub.add_parser(
        "evaluate", help="test accuracy and confusion matrix of a saved model"
    )
    evaluate.add_argument("model", help="run folder (or an ensemble's), or model.npz")
    member(evaluate)
    common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify PNG/JPEG images of digits")
    predict.add_argument("model", help="run folder (or an ensemble's), or model.npz")
    predict.add_argument("images", nargs="+", help="PNG/JPEG/... pictures, one digit each")
    member(predict)
    common(predict, data=False)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in config.VARIABLES:  # a bad CONVNET_* value is refused before anything is written
            config.setting(name)
        with interrupts.interruptible():
            return int(args.func(args) or 0)
    except ConvnetError as exc:  # our errors already say what is wrong: no traceback
        print(f"convnet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except OSError as exc:
        if exc.errno not in DISK_ERRORS or exc.filename is None:
            raise
        print(
            f"convnet {args.command}: error: {exc.filename}: could not be written "
            f"({exc.strerror}); the file that was there is kept as it was.",
            file=sys.stderr,
        )
        return 2
    except (training.RunInterruptedError, KeyboardInterrupt) as exc:  # a sweep's says more
        message = str(exc) or "Interrupted."
        print(f"\nconvnet {args.command}: {message}", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report an interrupted program


if __name__ == "__main__":
    sys.exit(main())
