#!/usr/bin/env python
"""Trigger every documented bad input and print docs/RELIABILITY.md's table from the real
messages, so the document can't drift from the code:

    python scripts/reliability_table.py > docs/RELIABILITY.md
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from convnet import (
    ConvPoolLayer,
    FullyConnectedLayer,
    Network,
    SoftmaxLayer,
    files,
    load,
    load_mnist,
    optimizers,
)
from convnet.cli.main import main as convnet
from convnet.data import book_format
from convnet.data.mnist import read_idx
from convnet.runs import folder as run_folder

TMP = Path(tempfile.mkdtemp())
X = np.random.default_rng(0).random((20, 4), dtype=np.float32)
Y = np.arange(20, dtype=np.int32) % 2


def small() -> Network:
    return Network([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, seed=0)


def crafted_pickle() -> None:
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = TMP / "mnist.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump(Exploit(), handle)
    load_mnist(path)


def truncated_idx() -> None:
    path = TMP / "t10k-labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 10]) + bytes(7))
    read_idx(path)


def foreign_file() -> None:
    path = TMP / "train-images-idx3-ubyte"
    path.write_bytes(b"%PDF-1.7 not MNIST")
    read_idx(path)


def model_mismatch() -> None:
    small().save(TMP / "model")
    arrays = dict(np.load(TMP / "model" / "model.npz"))
    arrays["layers.1.w"] = np.zeros((5, 2), np.float32)
    np.savez(TMP / "model" / "model.npz", **arrays)
    load(TMP / "model")


def model_version() -> None:
    small().save(TMP / "old")
    meta = json.loads((TMP / "old" / "model.json").read_text())
    (TMP / "old" / "model.json").write_text(
        json.dumps(meta | {"format_version": 7, "convnet_version": "9.0"})
    )
    load(TMP / "old")


def layer_reused() -> None:
    layers = [FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)]
    first = Network(layers, 2, seed=0)
    try:
        Network(layers, 2, seed=1)
    finally:
        del first


def expanded_cache_npz() -> None:
    path = TMP / "mnist_expanded_50000.npz"
    np.savez(path, x=np.zeros((5, 784), np.uint8), y=np.zeros(5, np.int64))
    load_mnist(path)


def idx_wrapping_header() -> None:
    path = TMP / "train-images-idx3-ubyte"
    path.write_bytes(
        bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (2**22, 2**21, 2**21))
    )
    read_idx(path)


def gzip_bomb_idx() -> None:
    path = TMP / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 100]) + bytes(50 * 2**20)))
    read_idx(path)


def ndarray_pickle() -> None:
    class Bomb:
        def __reduce__(self):
            return np.ndarray, ((10**12,),)

    path = TMP / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(Bomb(), protocol=2)))
    load_mnist(path)


def terabyte_pickle() -> None:
    path = TMP / "mnist.pkl"
    path.write_bytes(b"\x80\x04\x8e" + (10**12).to_bytes(8, "little") + b"abc")
    load_mnist(path)


def npz_header_bomb() -> None:
    small().save(TMP / "bomb")
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    with zipfile.ZipFile(TMP / "bomb" / "model.npz", "w") as archive:
        archive.writestr("layers.0.w.npy", buffer.getvalue() + bytes(64))
    load(TMP / "bomb")


CASES: list[tuple[str, Callable[[], object], str]] = [
    (
        "An IDX header whose sizes wrap around (2^22 x 2^21 x 2^21)",
        idx_wrapping_header,
        "test_limits.py::test_an_idx_header_whose_sizes_wrap_is_refused_by_name",
    ),
    (
        "A 50 KB .gz that inflates to 50 MB past its IDX header's 100 bytes",
        gzip_bomb_idx,
        "test_limits.py::test_a_gzip_bomb_is_inflated_no_further_than_its_header_promises",
    ),
    (
        "A pickle calling numpy.ndarray((10**12,))",
        ndarray_pickle,
        "test_limits.py::test_a_pickle_that_calls_ndarray_with_a_size_is_refused",
    ),
    (
        "A pickle whose bytes claim 10^12 bytes",
        terabyte_pickle,
        "test_limits.py::test_a_pickle_that_claims_a_terabyte_of_bytes_is_refused_unallocated",
    ),
    (
        "A model.npz whose array header claims 10^12 values",
        npz_header_bomb,
        "test_limits.py::test_an_npz_array_header_past_its_bytes_is_refused_by_name",
    ),
    (
        "A layer of 784 x 10^15 weights",
        lambda: FullyConnectedLayer(784, 10**15),
        "test_limits.py::test_a_layer_or_model_of_absurd_size_is_refused_before_allocating",
    ),
    (
        "Layers that don't chain",
        lambda: Network([FullyConnectedLayer(784, 100), SoftmaxLayer(30, 10)], 10),
        "test_layers.py::test_network_names_both_layers_when_they_do_not_chain",
    ),
    (
        "ConvPool `image_shape` batch != `mini_batch_size`",
        lambda: Network(
            [
                ConvPoolLayer(filter_shape=(20, 1, 5, 5), image_shape=(5, 1, 28, 28)),
                SoftmaxLayer(20 * 12 * 12, 10),
            ],
            10,
        ),
        "test_layers.py::test_network_checks_conv_batch_and_conv_chain",
    ),
    (
        "Filter channels != image channels",
        lambda: ConvPoolLayer(filter_shape=(20, 3, 5, 5), image_shape=(10, 1, 28, 28)),
        "test_layers.py::test_convpool_checks_channels_and_sizes",
    ),
    (
        "Non-positive size",
        lambda: FullyConnectedLayer(0, 10),
        "test_layers.py::test_fc_rejects_bad_sizes_and_dropout",
    ),
    (
        "`p_dropout` outside [0, 1)",
        lambda: FullyConnectedLayer(10, 10, p_dropout=1.0),
        "test_layers.py::test_fc_rejects_bad_sizes_and_dropout",
    ),
    (
        "`eta` <= 0",
        lambda: small().SGD((X, Y), 1, 2, 0.0),
        "test_network.py::test_sgd_rejects_bad_arguments",
    ),
    (
        "`lmbda` < 0",
        lambda: small().SGD((X, Y), 1, 2, 0.1, lmbda=-1.0),
        "test_network.py::test_sgd_rejects_bad_arguments",
    ),
    (
        "`epochs` < 1",
        lambda: small().SGD((X, Y), 0, 2, 0.1),
        "test_network.py::test_sgd_rejects_bad_arguments",
    ),
    (
        "Fewer examples than one mini-batch",
        lambda: small().SGD((X[:1], Y[:1]), 1, 2, 0.1),
        "test_network.py::test_sgd_rejects_bad_arguments",
    ),
    (
        "Feature count != first layer's input",
        lambda: small().SGD((X[:, :3], Y), 1, 2, 0.1),
        "test_network.py::test_sgd_rejects_bad_arguments",
    ),
    (
        "Labels outside [0, n_out)",
        lambda: small().SGD((X, Y + 5), 1, 2, 0.1),
        "test_network.py::test_sgd_rejects_bad_arguments",
    ),
    (
        "Labels that aren't integers",
        lambda: small().SGD((X, Y + 0.5), 1, 2, 0.1),
        "test_network.py::test_labels_must_be_integers_and_inputs_finite",
    ),
    (
        "NaN or inf in inputs",
        lambda: small().SGD((np.where(X > 0.9, np.inf, X), Y), 1, 2, 0.1),
        "test_network.py::test_labels_must_be_integers_and_inputs_finite",
    ),
    (
        "A layer another network already uses",
        layer_reused,
        "test_network.py::test_a_layer_in_use_by_another_network_is_refused_by_name",
    ),
    (
        "An optimizer's hyper-parameter out of range",
        lambda: optimizers.Adam(beta1=1.0),
        "test_optimizers.py::test_bad_optimizers_and_callbacks_are_named",
    ),
    (
        "Something other than a callback in `callbacks`",
        lambda: small().fit((X, Y), 1, optimizer=optimizers.SGD(0.1), callbacks=[print]),
        "test_optimizers.py::test_bad_optimizers_and_callbacks_are_named",
    ),
    (
        "Truncated IDX file",
        truncated_idx,
        "test_data.py::test_truncated_and_foreign_files_name_the_file",
    ),
    (
        "Not an IDX file",
        foreign_file,
        "test_data.py::test_truncated_and_foreign_files_name_the_file",
    ),
    (
        "Missing data",
        lambda: load_mnist(TMP / "nowhere"),
        "test_data.py::test_missing_data_says_where_it_looked_and_how_to_get_it",
    ),
    (
        "The book's expanded file not made yet",
        lambda: load_mnist(TMP / "data" / "mnist_expanded.pkl.gz"),
        "test_book_script.py::test_a_missing_expanded_file_names_the_command_that_makes_it",
    ),
    (
        "convnet's expansion cache given as a dataset",
        expanded_cache_npz,
        "test_book_script.py::test_convnets_expansion_cache_is_not_a_dataset",
    ),
    (
        "Crafted pickle (never executed)",
        crafted_pickle,
        "test_data.py::test_crafted_pickle_is_refused_without_running_code",
    ),
    (
        "Model arrays that don't match the architecture",
        model_mismatch,
        "test_serialization.py::test_model_file_errors_name_the_file",
    ),
    (
        "Model from an incompatible version",
        model_version,
        "test_serialization.py::test_model_file_errors_name_the_file",
    ),
    (
        "GPU asked for, none usable",
        lambda: small().__class__([FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, device="gpu"),
        "test_backend.py::test_gpu_without_cuda_fails_clearly_instead_of_falling_back",
    ),
    (
        "Unknown backend in the environment",
        lambda: (os.environ.__setitem__("CONVNET_BACKEND", "tpu"), small()),
        "test_backend.py::test_environment_chooses_the_backend",
    ),
    (
        "Unknown GPU precision",
        lambda: small().__class__(
            [FullyConnectedLayer(4, 3), SoftmaxLayer(3, 2)], 2, precision="fp16"
        ),
        "test_backend.py::test_gpus_multiply_in_tf32_unless_asked_for_float32",
    ),
]


# -- the command line --------------------------------------------------------------------
LAYERS = "fc:8:sigmoid,softmax"


def cli_setup() -> dict[str, Path]:
    """A dataset, a finished run, an ensemble and a picture to damage and misuse."""
    rng = np.random.default_rng(0)

    def split(n: int):
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)

    data = book_format.write(TMP / "data.npz", (split(100), split(20), split(20)))
    train = ["train", "--layers", LAYERS, "--epochs", "1", "--quiet", "--data", str(data)]
    with contextlib.redirect_stdout(io.StringIO()):
        convnet([*train, "--epochs", "2", "--out", str(TMP / "run")])
        convnet([*train, "--ensemble", "2", "--out", str(TMP / "ensemble")])
    return {"data": data, "run": TMP / "run", "ensemble": TMP / "ensemble"}


def fifo() -> Path:
    path = TMP / "pipe"
    if not path.exists():
        os.mkfifo(path)
    return path


def linked_member(ensemble: Path) -> Path:
    """A copy of ``ensemble`` whose member-1 is a link to a folder outside it."""
    copy = TMP / "linked-ensemble"
    if not copy.exists():
        shutil.copytree(ensemble, copy)
        shutil.move(copy / "member-1", TMP / "elsewhere")
        (copy / "member-1").symlink_to(TMP / "elsewhere", target_is_directory=True)
    return copy


def damaged(name: str, edit: Callable[[Path], None]) -> Path:
    """A copy of the finished run with ``edit`` applied to it."""
    folder = TMP / name
    shutil.copytree(TMP / "run", folder)
    edit(folder)
    return folder


def edit_json(file: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        value = json.loads((folder / file).read_text())
        change(value)
        (folder / file).write_text(json.dumps(value))

    return apply


def edit_checkpoint_record(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        with np.load(folder / "checkpoint.npz") as stored:
            arrays = {name: stored[name] for name in stored.files}
        meta = json.loads(arrays["meta"].tobytes())
        change(meta)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
        np.savez(folder / "checkpoint.npz", **arrays)

    return apply


def truncate(file: str) -> Callable[[Path], None]:
    def apply(folder: Path) -> None:
        raw = (folder / file).read_bytes()
        (folder / file).write_bytes(raw[: len(raw) // 2])

    return apply


def full_disk(argv: list[str]) -> list[str]:
    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    files.os.fsync = no_space  # type: ignore[attr-defined]
    return argv


def cli_cases(at: dict[str, Path]) -> list[tuple[str, Callable[[], list[str]], str]]:
    run, data = str(at["run"]), str(at["data"])
    train = ["train", "--layers", LAYERS, "--epochs", "1", "--quiet", "--data", data]
    a_file = TMP / "notes.txt"
    a_file.write_text("mine")
    (TMP / "held").mkdir()
    big = TMP / "big.png"
    Image.new("L", (9000, 6000), 255).save(big)
    test = "test_mishaps.py::"
    folders = "test_run_folders.py::"
    return [
        (
            "`--resume` with a flag it would ignore",
            lambda: ["train", "--resume", run, "--eta", "0.5"],
            test + "test_resume_refuses_flags_it_would_ignore_and_fewer_epochs",
        ),
        (
            "`--resume --epochs` fewer than trained",
            lambda: ["train", "--resume", run, "--epochs", "1"],
            test + "test_resume_refuses_flags_it_would_ignore_and_fewer_epochs",
        ),
        (
            "Resuming a finished run",
            lambda: ["train", "--resume", run],
            test + "test_resume_with_epochs_trains_the_run_on_and_says_what_it_continues",
        ),
        (
            "A misspelt option inside `--layers`",
            lambda: [*train, "--layers", "fc:8:relu:dropuot=0.5,softmax", "--out", str(TMP / "x")],
            test + "test_a_misspelt_layers_option_is_refused_before_anything_runs",
        ),
        (
            "`--out` that is a file",
            lambda: [*train, "--out", str(a_file)],
            test + "test_an_out_that_cannot_be_a_run_folder_is_refused_before_training",
        ),
        (
            "`--out` that is a FIFO (or a device, a socket)",
            lambda: [*train, "--out", str(fifo())],
            test + "test_an_out_that_is_a_device_or_a_fifo_is_never_written_over",
        ),
        (
            "`expand-mnist --out /dev/null --overwrite`",
            lambda: ["expand-mnist", "--out", "/dev/null", "--overwrite"],
            test + "test_an_out_that_is_a_device_or_a_fifo_is_never_written_over",
        ),
        (
            "An ensemble member that is a link to a folder elsewhere",
            lambda: ["evaluate", str(linked_member(at["ensemble"]))],
            test + "test_an_ensemble_member_linked_elsewhere_is_neither_read_nor_written",
        ),
        (
            "`--out` that cannot be written",
            lambda: [*train, "--out", str(a_file / "run")],
            test + "test_an_out_that_cannot_be_a_run_folder_is_refused_before_training",
        ),
        (
            "Two runs into one `--out`",
            lambda: [*train, "--out", str(TMP / "held")],
            test + "test_two_runs_into_one_folder_the_second_is_refused_naming_the_first",
        ),
        (
            "`model.json` field of the wrong type",
            lambda: [
                "evaluate",
                str(
                    damaged(
                        "kind", edit_json("model.json", lambda a: a["layers"][0].update(n_in="784"))
                    )
                ),
                "--data",
                data,
            ],
            folders + "test_damaged_files_are_named_with_the_field",
        ),
        (
            "`model.json` field missing",
            lambda: [
                "evaluate",
                str(
                    damaged("missing", edit_json("model.json", lambda a: a.pop("mini_batch_size")))
                ),
                "--data",
                data,
            ],
            folders + "test_random_corruptions_end_in_a_clear_error_or_a_correct_result",
        ),
        (
            "Truncated `model.npz`",
            lambda: ["evaluate", str(damaged("cut", truncate("model.npz"))), "--data", data],
            folders + "test_damaged_files_are_named_with_the_field",
        ),
        (
            "Corrupt `history.json`",
            lambda: ["plot", str(damaged("history", truncate("history.json"))), "--data", data],
            folders + "test_random_corruptions_end_in_a_clear_error_or_a_correct_result",
        ),
        (
            "Checkpoint record without a key",
            lambda: [
                "train",
                "--resume",
                str(damaged("meta", edit_checkpoint_record(lambda m: m.pop("step")))),
            ],
            folders + "test_random_corruptions_end_in_a_clear_error_or_a_correct_result",
        ),
        (
            "`--member` beyond an ensemble",
            lambda: ["evaluate", str(at["ensemble"]), "--member", "4", "--data", data],
            test + "test_evaluate_and_predict_an_ensemble_folder_vote_or_use_one_member",
        ),
        (
            "A huge picture for `predict`",
            lambda: ["predict", run, str(big)],
            "test_images.py::test_huge_pictures_are_refused_before_they_are_decoded",
        ),
        (
            "`--cluster` address where no scheduler answers",
            lambda: [
                *train,
                "--ensemble",
                "2",
                "--cluster",
                "tcp://127.0.0.1:9",
                "--out",
                str(TMP / "y"),
            ],
            "test_parallel.py::test_an_unreachable_cluster_fails_fast_and_names_the_address",
        ),
        (
            "`--workers` beyond the cores",
            lambda: [*train, "--ensemble", "2", "--workers", "64", "--out", str(TMP / "z")],
            "test_parallel.py::test_workers_without_an_ensemble_or_beyond_the_cores_are_refused",
        ),
        (
            "`--together` with `--workers`",
            lambda: [
                *train,
                "--ensemble",
                "2",
                "--together",
                "--workers",
                "2",
                "--out",
                str(TMP / "t"),
            ],
            "test_lockstep.py::test_together_is_one_way_to_train_an_ensemble",
        ),
        (
            "`--together` on the C backend",
            lambda: [
                *train,
                "--ensemble",
                "2",
                "--together",
                "--backend",
                "c",
                "--out",
                str(TMP / "u"),
            ],
            "test_lockstep.py::test_together_is_one_way_to_train_an_ensemble",
        ),
        (
            "A sweep grid value of the wrong type",
            lambda: [
                "sweep",
                "--layers",
                LAYERS,
                "--grid",
                "eta=0.1,fast",
                "--out",
                str(TMP / "s"),
            ],
            "test_sweep.py::test_a_bad_grid_is_refused_before_anything_is_written",
        ),
        (
            "A sweep parameter both swept and fixed",
            lambda: [
                *["sweep", "--layers", LAYERS, "--grid", "eta=0.1,0.2", "--eta", "0.3"],
                *["--out", str(TMP / "s")],
            ],
            "test_sweep.py::test_a_parameter_both_swept_and_fixed_is_refused",
        ),
        (
            "A sweep grid value `train` would refuse (`--grid lmbda=-1,0`)",
            lambda: [
                *["sweep", "--layers", LAYERS, "--grid", "lmbda=-1,0"],
                "--out",
                str(TMP / "s"),
            ],
            "test_sweep.py::test_a_bad_grid_is_refused_before_anything_is_written",
        ),
        (
            "A sweep with `--repeats 0`",
            lambda: [
                *["sweep", "--layers", LAYERS, "--grid", "eta=0.1,0.2", "--repeats", "0"],
                *["--out", str(TMP / "s")],
            ],
            "test_sweep.py::test_a_bad_grid_is_refused_before_anything_is_written",
        ),
        (
            "A sweep of `--net` names with `--layers`",
            lambda: [
                *["sweep", "--layers", LAYERS, "--grid", "net=shallow,conv"],
                "--out",
                str(TMP / "s"),
            ],
            "test_sweep.py::test_a_bad_grid_is_refused_before_anything_is_written",
        ),
        (
            "A sweep of a billion trials",
            lambda: [
                *["sweep", "--layers", LAYERS, "--grid", "eta=0.1,0.2", "--repeats", "1000000000"],
                *["--out", str(TMP / "s")],
            ],
            "test_sweep.py::test_a_bad_grid_is_refused_before_anything_is_written",
        ),
        (
            "`--cluster ''` (an unset shell variable)",
            lambda: [*train, "--ensemble", "2", "--cluster", "", "--out", str(TMP / "v")],
            test + "test_the_smaller_mistakes_of_issue_31_are_named",
        ),
        (
            "A sweep with nothing to sweep",
            lambda: ["sweep", "--layers", LAYERS, "--out", str(TMP / "s")],
            "test_sweep.py::test_repeats_alone_give_one_networks_spread_over_seeds",
        ),
        (
            "A full disk while saving",
            lambda: full_disk([*train, "--out", run, "--overwrite"]),
            test + "test_a_full_disk_is_named_and_the_previous_model_is_kept",
        ),
    ]


def cli_table() -> None:
    at = cli_setup()
    print("\n## At the command line\n")
    print("Each case runs `convnet` on a real run folder (damaged as the case says) and prints")
    print("what it wrote: errors are one line on stderr with exit code 2, never a traceback.\n")
    print("| case | exit | what convnet prints | test |")
    print("|---|---|---|---|")
    fsync = files.os.fsync
    for title, argv_for, test in cli_cases(at):
        out, err = io.StringIO(), io.StringIO()
        argv = argv_for()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            if title.startswith("Two runs"):
                with run_folder.locked(Path(argv[-1])):
                    code = convnet(argv)
            else:
                code = convnet(argv)
        files.os.fsync = fsync
        text = (err.getvalue() or out.getvalue()).strip().splitlines()[-1]
        text = text.replace(str(TMP), "…").replace(str(os.getpid()), "PID").replace("|", "\\|")
        print(f"| {title} | {code} | {text} | `tests/{test}` |")


def warnings_table() -> None:
    net = small()
    print("\n## Numbers that are probably a mistake\n")
    print("| case | what convnet does | test |")
    print("|---|---|---|")
    test = "test_nan_images_are_refused_and_0_255_images_are_converted_saying_so"
    test = f"`tests/test_mishaps.py::{test}`"
    as_bytes = np.round(X * 255).astype(np.uint8)
    for title, images in [
        ("`uint8` images 0..255 (training or `predict`)", as_bytes),
        ("float images 0..255", as_bytes.astype(np.float32)),
        ("NaN in images for `predict`", np.where(X > 0.9, np.nan, X)),
    ]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                net.predict(images)
                text = f"warns (`{caught[0].category.__name__}`): {caught[0].message}"
            except Exception as exc:
                text = f"refuses (`{type(exc).__name__}`): {exc}"
        print(f"| {title} | {text} | {test} |")


def main() -> None:
    print("# Reliability: what convnet says when something is wrong\n")
    print(
        "Generated by `python scripts/reliability_table.py > docs/RELIABILITY.md`, which triggers"
    )
    print("each case and prints the real message (temporary paths shortened to `…/`). Every")
    print("exception is in `convnet.errors` and subclasses the builtin that fits (`ValueError`,")
    print("`OSError`, `FileNotFoundError`, `RuntimeError`, `FloatingPointError`).\n")
    print("| case | exception | message | test |")
    print("|---|---|---|---|")
    for title, trigger, test in CASES:
        try:
            trigger()
        except Exception as exc:
            text = str(exc).replace(str(TMP), "…").replace("\n", " ").replace("|", "\\|")
            print(f"| {title} | `{type(exc).__name__}` | {text} | `tests/{test}` |")
        else:
            print(f"| {title} | **no error raised** | | `tests/{test}` |")
        finally:
            os.environ.pop("CONVNET_BACKEND", None)
    cli_table()
    warnings_table()
    print(DIVERGENCE_AND_FILES)


DIVERGENCE_AND_FILES = """
## Long runs

* **Divergence.** When the cost or the weights become NaN or infinite, training stops
  with `DivergenceError` naming the epoch and the exact mini-batch (found by replaying the
  epoch step by step), suggests a smaller eta, and restores the weights from before that
  epoch; `convnet train` also writes them to `model.npz`
  (`tests/test_training.py::test_divergence_names_epoch_and_batch_and_keeps_last_good_weights`).
* **Checkpoints.** `convnet train --checkpoint-every N` writes `checkpoint.npz` (weights,
  the optimizer's state, best weights, epoch, eta, each stateful callback's counters, the
  shuffling RNG's state, the dropout step counter, history, architecture, arguments) as one file:
  temporary file in the same folder, fsync, `os.replace`. `convnet train --resume RUN_DIR`
  continues with the original arguments. Runs killed with SIGKILL at random moments resume
  to weights equal bit for bit to an uninterrupted run
  (`tests/test_reliability.py::test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run`);
  a kill in the middle of a checkpoint write leaves the previous checkpoint intact
  (`tests/test_reliability.py::test_a_kill_during_a_checkpoint_write_keeps_the_previous_checkpoint`).
* **Ctrl-C or SIGTERM** during `convnet train` ends it with one line, no traceback, exit
  code 130: where it stopped (epoch, mini-batch), which checkpoint is kept, and the
  `--resume` command
  (`tests/test_reliability.py::test_an_interrupted_run_says_where_and_keeps_its_checkpoint`).
  Checkpoints hold the same weight checks as model files (dtype, shape, finite)
  (`tests/test_reliability.py::test_a_checkpoint_gets_the_same_checks_as_a_model_file`).
  A Ctrl-C that lands where Python would drop it (a garbage-collector callback such as
  JAX's, a weak reference's callback, a `__del__`) is delivered again a moment later
  (`tests/test_reliability.py::test_an_interruption_that_lands_in_a_gc_callback_is_not_lost`).
  One that a library drops silently (Numba, in the callbacks of the code it compiles: the
  C backend's softmax) stays pending: training ends at the next compiled call, and any
  other work when it is done
  (`tests/test_reliability.py::test_an_interruption_dropped_inside_a_training_call_still_ends_the_training`,
  `tests/test_reliability.py::test_an_interruption_dropped_on_the_way_is_raised_when_the_work_ends`).
  `convnet sweep` says how many trials finished and gives its own `--resume` command
  (`tests/test_sweep.py::test_ctrl_c_on_the_driver_keeps_every_finished_trial`);
  `scripts/chapter6.py table` parks every unfinished checkpoint in `docs/` first, as it also
  does every 10 minutes
  (`tests/test_chapter6_table.py::test_the_table_parks_as_it_goes_and_ends_cleanly_on_sigterm`).
* **Worker processes never outlive their driver.** A pool worker ends with the process that
  started it, even one killed with SIGKILL, rather than train on into a folder the next run
  takes over
  (`tests/test_parallel.py::test_a_worker_ends_with_its_parent_even_one_killed_with_sigkill`);
  two processes writing the same file (two workers building the expanded set's cache) both
  succeed, and only a killed writer's leftovers are cleared
  (`tests/test_reliability.py::test_a_writer_never_removes_the_file_another_is_still_writing`).
* **A lost cluster worker.** A Dask worker killed with kill -9 while it trains an ensemble
  member: the member is trained again on another worker, and the ensemble ends
  bit-identical to one trained in turn
  (`tests/test_parallel.py::test_a_dask_worker_killed_mid_member_does_not_lose_the_ensemble`);
  a cluster left with no worker at all ends the run after 60 s with one line naming the
  cluster, each member keeping its checkpoint (Dask alone would wait forever)
  (`tests/test_parallel.py::test_a_dask_cluster_that_loses_every_worker_ends_the_ensemble_in_bounded_time`).
* **A new run never overwrites a trained model.** `convnet train --out DIR` refuses a folder
  that already holds a model or checkpoint (use `--resume`, another folder, or
  `--overwrite`) (`tests/test_cli.py::test_train_never_overwrites_a_trained_model_unless_asked`).
* **Damaged run folders.** Every reader of a run folder (`evaluate`, `predict`, `info`,
  `plot`, `--resume`, `convnet.load`, `checkpoint.load`) checks what it reads through one
  module, `convnet/fields.py`: every JSON field's kind and range, every array's name,
  dtype, shape and finiteness, each `.npz` member's CRC. A fuzz test feeds 210 random
  corruptions of a real run folder (truncations, flipped bytes, edited JSON values, edited
  arrays) to `evaluate`, `predict` and `--resume`: each ends in a one-line convnet error
  or a correct result, and a command that fails changes no file
  (`tests/test_run_folders.py::test_random_corruptions_end_in_a_clear_error_or_a_correct_result`,
  and for the API readers
  `tests/test_run_folders.py::test_the_api_readers_raise_model_file_errors_for_the_same_damage`).
* **One writer per run folder.** `convnet train` holds an `flock` on `RUN_DIR/.convnet.lock`
  (holding its pid) while it writes; the kernel drops it when the process ends, even by
  `kill -9`.
* **Ensembles resume** member by member: `--resume` of an ensemble's folder trains the
  members never started, continues the unfinished ones from their checkpoints and leaves
  the finished ones alone; the result equals an uninterrupted ensemble bit for bit, one
  after another, with `--workers 2` and on a Dask cluster
  (`tests/test_parallel.py::test_an_interrupted_ensemble_resumes_only_what_is_missing`).
* **`--resume`** takes the run's stored arguments, each checked as the parser checks it;
  `--epochs N` trains the run on to N epochs; flags it would otherwise ignore are refused;
  a finished run says so and changes nothing; a resumed run says where it stands (epoch E
  of N, eta, best validation accuracy)
  (`tests/test_mishaps.py::test_resume_with_epochs_trains_the_run_on_and_says_what_it_continues`).
* **Pictures for `predict`** are read as they are meant to be seen (EXIF rotation, RGBA
  composited against a contrasting background, 16-bit kept 16-bit), the paper's shading is
  estimated (a wide grey opening) and subtracted, and the crop ignores stray specks; 30
  rendered photos (shading down to 25%, rotation, blur, noise, five formats) of digits the
  network reads in MNIST form: at most 3 may be misread
  (`tests/test_images.py::test_photos_of_digits_under_shading_rotation_noise_and_blur_are_read_right`).
* **Saving** a model is atomic too: a failed save leaves the previous model
  (`tests/test_serialization.py::test_a_failed_save_leaves_the_previous_model_intact`).
* **Loading is safe.** Weights load with `np.load(..., allow_pickle=False)` and are checked
  against the architecture (names, shapes, float32, finite) before use; the book's
  `mnist.pkl.gz` / `mnist_expanded.pkl.gz` go through a restricted unpickler that admits
  only numpy arrays, numbers, tuples and lists.
* **Download.** `convnet download mnist` tries mirrors in order (`CONVNET_MNIST_MIRRORS`),
  resumes partial files with HTTP Range, retries with exponential backoff, verifies sha256
  (canonical archive, or canonical uncompressed content for recompressed mirrors), places
  files atomically, and fails with one message listing each mirror's reason
  (`tests/test_download.py`, against a local server on 127.0.0.1).
"""

if __name__ == "__main__":
    main()
