"""What ``convnet train`` does with a run's arguments (:mod:`convnet.runs.arguments`): one
run, an ensemble's members one after another or at once (:mod:`convnet.runs.jobs`), and
``--resume`` of either. Every run folder it writes is :mod:`convnet.runs.folder`'.
"""

from __future__ import annotations

import socket
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convnet import checkpoint, files
from convnet.callbacks import Callback, EarlyStopping, EtaSchedule, Position
from convnet.data.expand import load_expanded
from convnet.data.mnist import load_mnist
from convnet.errors import ArgumentError
from convnet.network import Network
from convnet.runs import arguments, jobs
from convnet.runs import folder as run_folder
from convnet.runtime import backend
from convnet.trainer import FitOptions


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _data(args: arguments.Arguments):
    return load_mnist(args.data)


# -- train --------------------------------------------------------------------------------
class RunInterruptedError(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during training; says where, and how to continue (still an
    interruption: ``except Exception`` does not swallow it, and workers are stopped)."""

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


class EnsembleInterruptedError(RunInterruptedError):
    """Ctrl-C (or SIGTERM) while an ensemble's members train: which members are done, and
    the ensemble's folder (never a member's) to resume."""

    def __init__(self, run_dir: Path, members: int) -> None:
        folders = [run_folder.member_dir(run_dir, k, members) for k in range(members)]
        done = [k for k, f in enumerate(folders) if not run_folder.missing_files(f)]
        started = [
            k for k, f in enumerate(folders) if k not in done and checkpoint.path_in(f).exists()
        ]
        KeyboardInterrupt.__init__(
            self,
            f"Interrupted; members {done or 'none'} finished, {started or 'none'} keep their "
            f"last checkpoints. Resume with: convnet train --resume {run_dir}",
        )


def _train_one(
    args,
    run_dir: Path,
    seed: int,
    data: tuple,
    hyper: dict,
    resume: tuple | None = None,
) -> Network:
    mbs = args.mini_batch_size
    if resume is not None:
        net, state = resume
        if state.history.stopped:  # stopped early: nothing to train, only files to write
            hyper = hyper | {"epochs": state.epoch}
    else:
        net = Network(
            arguments.network_layers(args, mbs),
            mbs,
            backend=args.backend,
            device=args.device,
            seed=seed,
        )
        state = None
    if not args.quiet:
        net.summary()
    position = Position()
    callbacks: list[Callback] = [position, *_stopping(args)]
    try:
        run_folder.train(
            net,
            run_dir,
            *data,
            callbacks=callbacks,
            state=state,
            arguments=vars(args) | {"out": str(run_dir)},
            details=hyper | {"seed": seed},
            **_training_options(args, hyper),
        )
    except KeyboardInterrupt:
        raise RunInterruptedError(run_dir, position) from None
    return net


def _training_options(args: arguments.Arguments, hyper: dict[str, Any]) -> dict[str, Any]:
    """How every run of this command trains (run_folder.train's and train_together's)."""
    options = FitOptions(
        hyper["epochs"],
        arguments.build_optimizer(hyper),
        hyper["lmbda"],
        args.shuffle,
        not args.quiet,
    )
    return {"options": options, "checkpoint_every": args.checkpoint_every}


def _stopping(args: arguments.Arguments) -> list[Callback]:
    """The callbacks of ``--eta-schedule`` and ``--patience``, fresh for one run."""
    callbacks: list[Callback] = []
    if args.eta_schedule is not None:
        callbacks.append(EtaSchedule(args.eta_schedule))
    if args.patience is not None:
        callbacks.append(EarlyStopping(args.patience))
    return callbacks


def _training_data(args: arguments.Arguments, hyper: dict) -> tuple:
    training, validation, test = _data(args)
    if hyper["expanded"]:
        training = load_expanded(training)
    if args.limit is not None and args.limit > len(training[0]):
        raise ArgumentError(
            f"--limit: expected at most {len(training[0]):,}, the training images there are. "
            f"Received: {args.limit:,}."
        )
    if args.limit is not None:
        training = (training[0][: args.limit], training[1][: args.limit])
    return training, validation, test


def train(given: dict[str, Any], resume: str | None = None) -> int:
    """``convnet train`` with the flags typed (``given``), or ``--resume`` of a run folder."""
    if resume:
        return _resume(Path(resume), given)
    if not given.get("out"):
        raise ArgumentError("train: expected --out RUN_DIR (or --resume RUN_DIR).")
    args = arguments.with_defaults(given)
    hyper = arguments.hyper_parameters(args)
    if args.layers:
        arguments.network_layers(
            args, args.mini_batch_size
        )  # a misspelt --layers fails before any data is read
    run_dir = Path(args.out)
    members = args.ensemble or 1
    _check_ensemble_flags(args, members)
    with _workers(args, members) as workers:  # a bad --workers or --cluster writes nothing
        run_folder.prepare_out(run_dir, args.overwrite)
        with run_folder.locked(run_dir):
            if members > 1:
                run_folder.write_plan(run_dir, vars(args), members)
            everyone = _Members(args, run_dir, members, hyper, list(range(members)), set())
            _train_members(everyone, workers)
    return 0


def _check_ensemble_flags(args: arguments.Arguments, members: int) -> None:
    """--workers, --cluster and --together are ways to train an ensemble's members: one."""
    given = [name for name in ("workers", "cluster", "together") if getattr(args, name)]
    if given and members == 1:
        raise ArgumentError(
            f"--{given[0]}: trains ensemble members at once; give --ensemble N too."
        )
    if len(given) > 1:
        raise ArgumentError(
            f"{' and '.join('--' + name for name in given)}: choose one way to train the "
            "members at once (processes, a cluster, or one program)."
        )
    chosen = backend.resolve(args.backend, args.device) if args.together else None
    if chosen is not None and chosen.name != "jax":
        raise ArgumentError(
            f"--together: trains the members as one program on the JAX backend only. "
            f"Received: backend {chosen.name}. Use --backend jax, or drop --together."
        )


def _workers(args: arguments.Arguments, members: int) -> jobs.Workers:
    """Where members train at once (``--workers``' pinned pool or a ``--cluster``'s
    executor), made and checked before anything is written; no executor: one after
    another in this process."""
    if args.cluster is not None and not args.cluster.strip():
        return jobs.Workers(cluster=args.cluster)  # refuses it by name
    if members < 2 or not (args.cluster or (args.workers or 1) > 1):
        return jobs.Workers()
    return jobs.Workers(args.workers, args.cluster)


@dataclass(frozen=True)
class _Members:
    """An ensemble's members a command trains: ``todo`` of ``count`` in ``run_dir`` (those
    in ``resumed`` from their checkpoints), with the run's arguments and hyper-parameters."""

    args: arguments.Arguments
    run_dir: Path
    count: int
    hyper: dict[str, Any]
    todo: list[int]
    resumed: set[int]

    def folder(self, k: int) -> Path:
        return run_folder.member_dir(self.run_dir, k, self.count)


def _train_members(m: _Members, workers: jobs.Workers) -> None:
    """Train the members on ``workers``, as one program, or one after another in this
    process; then take the vote of all of them. An interruption names the ensemble's
    folder to resume, never a member's."""
    args, members = m.args, m.count
    try:
        if workers.executor is not None and m.todo:
            _train_in_parallel(m, workers)
        elif args.together and len(m.todo) > 1:
            _train_together(m)
        elif m.todo:
            _train_in_turn(m)
    except (RunInterruptedError, KeyboardInterrupt):
        if members == 1:
            raise
        raise EnsembleInterruptedError(m.run_dir, members) from None
    if members == 1:
        return
    test = _data(args)[2]
    result = run_folder.write_ensemble(
        m.run_dir, members, test, backend=args.backend, device=args.device
    )
    for k, accuracy in enumerate(result["members"]):
        print(f"member {k}: test accuracy {accuracy:.2%}")
    print(f"voted ({members} nets): test accuracy {result['voted']:.2%}")


def _train_in_turn(m: _Members) -> None:
    """The members one after another in this process, the data read once."""
    args = m.args
    data = _training_data(args, m.hyper)
    for k in m.todo:
        folder = m.folder(k)
        if m.count > 1 and not args.quiet:
            print(f"\n== ensemble member {k + 1} of {m.count} (seed {args.seed + k}) ==")
        state = None
        if k in m.resumed:
            net, training_state, _ = checkpoint.load(
                folder, backend=args.backend, device=args.device
            )
            state = (net, training_state)
        _train_one(args, folder, args.seed + k, data, m.hyper, state)
        if not args.quiet:
            print(f"Saved {folder}/model.npz, model.json, history, curves.png, errors.png")


def _train_together(m: _Members) -> None:
    """The members as one program (``--together``); resumed ones from their checkpoints,
    which must all stand at the same epoch."""
    args, todo, hyper = m.args, m.todo, m.hyper
    mbs = args.mini_batch_size
    folders = [m.folder(k) for k in todo]
    nets, states = [], []
    for k, folder in zip(todo, folders, strict=True):
        if k in m.resumed:
            net, state, _ = checkpoint.load(folder, backend=args.backend, device=args.device)
        else:
            layers, seed = arguments.network_layers(args, mbs), args.seed + k
            net = Network(layers, mbs, backend=args.backend, device=args.device, seed=seed)
            state = None
        nets.append(net)
        states.append(state)
    epochs = {k: s.epoch if s is not None else 0 for k, s in zip(todo, states, strict=True)}
    if len(set(epochs.values())) > 1:
        where = ", ".join(f"member {k} at epoch {e}" for k, e in epochs.items())
        raise ArgumentError(
            f"--together: trains members as one program, which must all stand at the same "
            f"epoch; {m.run_dir} has {where}. Resume without --together (members one after "
            "another, or --workers)."
        )
    if not args.quiet:
        nets[0].summary()
        print(f"Training members {todo} of {m.count} as one program")
    positions = [Position() for _ in todo]
    callbacks = [[position, *_stopping(args)] for position in positions]
    try:
        run_folder.train_together(
            nets,
            folders,
            *_training_data(args, hyper),
            callbacks=callbacks,
            states=states,
            arguments=[vars(args) | {"out": str(folder)} for folder in folders],
            details=[hyper | {"seed": net.seed} for net in nets],
            **_training_options(args, hyper),
        )
    except KeyboardInterrupt:
        raise RunInterruptedError(folders[0], positions[0]) from None


def train_member(
    values: dict[str, Any],
    folder: str,
    send_back: bool = False,
    resume_from: bytes | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """One ensemble member or sweep trial (its arguments: ``values``), in a worker
    (:func:`convnet.runs.jobs.run`) or this process: trains ``folder`` as ``convnet train``
    trains a member (the same seeds, data and code), quietly, from its checkpoint with
    ``resume`` (``resume_from``: the checkpoint's bytes, for a worker on another machine).
    With ``send_back`` it trains in a temporary folder there and returns the files. Returns
    the final test accuracy, the files, the worker's host and the seconds it took."""
    start = time.perf_counter()
    args = arguments.with_defaults(values)
    hyper = arguments.hyper_parameters(args)
    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) if send_back else Path(folder)
        if resume_from is not None:
            files.write_bytes(checkpoint.path_in(target), resume_from)
        state = None
        if resume:
            net, training_state, _ = checkpoint.load(
                target, backend=args.backend, device=args.device
            )
            state = (net, training_state)
        net = _train_one(args, target, args.seed, _training_data(args, hyper), hyper, state)
        made = (
            {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()} if send_back else {}
        )
    return {
        "accuracy": float(net.history.test_accuracy[-1]),
        "files": made,
        "host": socket.gethostname(),
        "seconds": time.perf_counter() - start,
    }


def _train_in_parallel(m: _Members, workers: jobs.Workers) -> None:
    """The members at once on ``workers``: ``--workers`` pinned local processes, or a
    ``--cluster``'s workers (whose run folders come back and are written here)."""
    args, todo = m.args, m.todo
    shared = vars(args) | {"ensemble": m.count, "workers": None, "cluster": None, "quiet": True}
    index = {m.folder(k): k for k in todo}
    member_jobs = [
        jobs.Job(folder, shared | {"seed": args.seed + k, "out": str(folder)})
        for folder, k in index.items()
    ]
    if not args.quiet:
        print(f"Training {len(todo)} of {m.count} members {workers.describe()}")
    finished = 0

    def done(job: jobs.Job, result: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        if not args.quiet:
            k = index[job.folder]
            print(
                f"member {k} (seed {args.seed + k}): test accuracy {result['accuracy']:.2%}; "
                f"{finished} of {len(todo)} done"
            )

    jobs.run(member_jobs, workers, train_member, on_done=done)  # a member's error ends it


def _resume_ensemble(run_dir: Path, given: dict[str, Any]) -> int:
    """``--resume`` of an ensemble's folder: the members not yet trained, the unfinished
    ones from their checkpoints, then the vote; finished members are left as they are."""
    members, stored = run_folder.read_plan(run_dir)
    args = arguments.resumed_arguments(stored, given, out=str(run_dir), ensemble=members)
    _check_ensemble_flags(args, members)
    hyper = arguments.hyper_parameters(args)
    todo, resumed = [], set()
    for k in range(members):
        folder = run_folder.member_dir(run_dir, k, members)
        if not checkpoint.path_in(folder).exists():
            todo.append(k)
            continue
        _, state, _ = checkpoint.load(folder, backend=args.backend, device=args.device)
        if "epochs" in given and given["epochs"] < state.epoch:
            raise ArgumentError(
                f"--epochs: member {k} has already trained {_epochs(state.epoch)}; expected "
                f"--epochs >= {state.epoch}. Received: {given['epochs']}."
            )
        stopped = state.history.stopped
        trained = state.epoch >= hyper["epochs"] or stopped
        if not trained or (not _diverged(stopped) and run_folder.missing_files(folder)):
            # Unfinished, or trained with files missing: finished from its checkpoint.
            todo.append(k)
            resumed.add(k)
    if not todo and (run_dir / run_folder.ENSEMBLE_FILE).exists():
        print(
            f"{run_dir}: finished (all {members} members trained, the vote taken). Nothing "
            f"was changed. To train further: convnet train --resume {run_dir} --epochs N."
        )
        return 0
    if not args.quiet:
        fresh = [k for k in todo if k not in resumed]
        print(
            f"Resuming the ensemble {run_dir}: members {sorted(resumed) or 'none'} from their "
            f"checkpoints, {fresh or 'none'} from the start, "
            f"{[k for k in range(members) if k not in todo] or 'none'} done."
        )
    with _workers(args, members) as workers, run_folder.locked(run_dir):
        _train_members(_Members(args, run_dir, members, hyper, todo, resumed), workers)
    return 0


def _diverged(stopped: str | None) -> bool:
    return bool(stopped and stopped.startswith("diverged"))


def _resume(run_dir: Path, given: dict[str, Any]) -> int:
    """``--resume RUN_DIR``: the run's own arguments; ``--epochs`` trains it on further."""
    refused = [f for f in arguments.TRAIN_FLAGS if f.name in given and not f.on_resume]
    if refused:
        typed = " ".join(
            f"{arguments.flag_name(f.name)}" + ("" if f.kind is bool else f" {given[f.name]}")
            for f in refused
        )
        allowed = [arguments.flag_name(f.name) for f in arguments.TRAIN_FLAGS if f.on_resume]
        raise ArgumentError(
            f"--resume {run_dir}: continues the run with the arguments it was started with, "
            f"so only {', '.join(allowed)} may be "
            f"given with it. Received: {typed}. Drop them, or start a new run with --out."
        )
    if run_folder.is_ensemble(run_dir):
        return _resume_ensemble(run_dir, given)
    if given.get("together"):
        raise ArgumentError(
            f"--together: trains ensemble members at once; {run_dir} is a single run."
        )
    with run_folder.locked(run_dir) if run_dir.is_dir() else nullcontext():
        net, state, stored = checkpoint.load(
            run_dir, backend=given.get("backend"), device=given.get("device")
        )
        args = arguments.resumed_arguments(stored, given, out=str(run_dir), ensemble=None)
        hyper = arguments.hyper_parameters(args)
        done, history = state.epoch, state.history
        best = (
            f"best validation accuracy {history.best_validation_accuracy:.2%} "
            f"(epoch {history.best_epoch})"
            if history.best_validation_accuracy is not None
            else "no validation accuracy yet"
        )
        if "epochs" in given and given["epochs"] < done:
            raise ArgumentError(
                f"--epochs: {run_dir} has already trained {_epochs(done)}; expected "
                f"--epochs >= {done} to train it on. Received: {given['epochs']}."
            )
        trained = done >= hyper["epochs"] or history.stopped
        missing = [] if _diverged(history.stopped) else run_folder.missing_files(run_dir)
        if trained and missing:
            print(
                f"{run_dir}: its training is done, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing: writing them from its "
                "checkpoint."
            )
        elif trained:
            why = f"stopped early: {history.stopped}" if history.stopped else "all epochs done"
            print(
                f"{run_dir}: finished ({done} of {_epochs(hyper['epochs'])}, {why}; {best}). "
                f"Nothing was changed. To train it further: convnet train --resume {run_dir} "
                f"--epochs N."
            )
            return 0
        if not trained and not args.quiet:
            print(
                f"Resuming {run_dir}: {done} of {_epochs(hyper['epochs'])} done, "
                f"eta {state.eta:g}, {best}."
            )
        _train_one(args, run_dir, net.seed, _training_data(args, hyper), hyper, (net, state))
        if not args.quiet:
            print(f"Saved {run_dir}/model.npz, model.json, history, curves.png, errors.png")
    return 0
