"""Reading a run folder's files: one set of checks for every reader.

Run folders are edited by hand, copied half-way, truncated by full disks and written by
other convnet versions. Everything convnet reads from one (model, checkpoint, history,
ensemble record, the arguments ``--resume`` restarts with) comes through these functions,
so a missing, truncated, edited or foreign file ends in one :class:`ModelFileError` that
names the file and the field (``…/model.json: layers[1].n_in: expected ... Received:
...``), never in a ``KeyError`` or ``BadZipFile`` from deep inside.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal, NoReturn, overload

import numpy as np

from convnet import limits
from convnet.errors import ModelFileError
from convnet.history import PER_EPOCH, History

# What a damaged .npz can raise while numpy reads it: a zip directory cut short or
# overwritten, a member whose CRC no longer matches, a header that is no longer numpy's.
_NPZ_DAMAGE = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)


class Fields:
    """A JSON object read from ``source``, with getters that check each field's kind.

    ``where`` is the object's own place in the file (``layers[1]``), so every message
    names the exact field: ``…/model.json: layers[1].n_in: expected ...``.
    """

    def __init__(self, value: Any, source: Path, where: str = "") -> None:
        self.source, self.where = source, where
        if not isinstance(value, dict):
            self._fail(None, "a JSON object", _shown(value))
        self.value: dict[str, Any] = value

    def _name(self, key: str | None) -> str:
        if key is None:
            return self.where or "the file"
        return f"{self.where}.{key}" if self.where else key

    def _fail(self, key: str | None, wanted: str, received: str) -> NoReturn:
        raise ModelFileError(
            f"{self.source}: {self._name(key)}: expected {wanted}. Received: {received}."
        )

    def __contains__(self, key: str) -> bool:
        return key in self.value

    def _get(self, key: str, wanted: str, optional: bool) -> Any:
        if key not in self.value:
            if optional:
                return None
            self._fail(key, wanted, "nothing (the field is missing)")
        value = self.value[key]
        if value is None and not optional:
            self._fail(key, wanted, "null")
        return value

    # Each reader returns its type, or None only where ``optional=True`` allowed a
    # missing field: the overloads say so to the type checker.
    @overload
    def integer(
        self,
        key: str,
        *,
        low: int | None = ...,
        high: int | None = ...,
        optional: Literal[False] = ...,
    ) -> int: ...
    @overload
    def integer(
        self, key: str, *, low: int | None = ..., high: int | None = ..., optional: bool
    ) -> int | None: ...
    def integer(
        self,
        key: str,
        *,
        low: int | None = None,
        high: int | None = None,
        optional: bool = False,
    ) -> int | None:
        wanted = "an integer" + _range(
            -math.inf if low is None else low, math.inf if high is None else high
        )
        value = self._get(key, wanted, optional)
        if value is None:
            return None
        if (
            not _is_int(value)
            or (low is not None and value < low)
            or (high is not None and value > high)
        ):
            self._fail(key, wanted, _shown(value))
        return int(value)

    @overload
    def number(
        self,
        key: str,
        *,
        low: float = ...,
        high: float = ...,
        above: bool = ...,
        optional: Literal[False] = ...,
    ) -> float: ...
    @overload
    def number(
        self,
        key: str,
        *,
        low: float = ...,
        high: float = ...,
        above: bool = ...,
        optional: bool,
    ) -> float | None: ...
    def number(
        self,
        key: str,
        *,
        low: float = -math.inf,
        high: float = math.inf,
        above: bool = False,
        optional: bool = False,
    ) -> float | None:
        """A finite number in [low, high] (in (low, high] with ``above``)."""
        wanted = "a finite number" + (f" > {low:g}" if above else _range(low, high))
        value = self._get(key, wanted, optional)
        if value is None:
            return None
        ok = _is_number(value) and math.isfinite(value) and low <= value <= high
        if not ok or (above and value == low):
            self._fail(key, wanted, _shown(value))
        return float(value)

    @overload
    def text(
        self, key: str, *, choices: tuple[str, ...] | None = ..., optional: Literal[False] = ...
    ) -> str: ...
    @overload
    def text(
        self, key: str, *, choices: tuple[str, ...] | None = ..., optional: bool
    ) -> str | None: ...
    def text(
        self, key: str, *, choices: tuple[str, ...] | None = None, optional: bool = False
    ) -> str | None:
        wanted = f"one of {', '.join(map(repr, choices))}" if choices else "a string"
        value = self._get(key, wanted, optional)
        if value is None:
            return None
        if not isinstance(value, str) or (choices and value not in choices):
            self._fail(key, wanted, _shown(value))
        return value

    @overload
    def flag(self, key: str, *, optional: Literal[False] = ...) -> bool: ...
    @overload
    def flag(self, key: str, *, optional: bool) -> bool | None: ...
    def flag(self, key: str, *, optional: bool = False) -> bool | None:
        value = self._get(key, "true or false", optional)
        if value is not None and not isinstance(value, bool):
            self._fail(key, "true or false", _shown(value))
        return value

    def integers(self, key: str, length: int, *, low: int = 1) -> list[int]:
        wanted = f"a list of {length} integers >= {low}"
        value = self._get(key, wanted, False)
        if (
            not isinstance(value, list)
            or len(value) != length
            or not all(_is_int(v) and v >= low for v in value)
        ):
            self._fail(key, wanted, _shown(value))
        return [int(v) for v in value]

    def column(self, key: str, *, integers: bool = False, nullable: bool = True) -> list:
        """A per-epoch list of numbers (``None`` allowed with ``nullable``)."""
        wanted = f"a list of {'integers' if integers else 'finite numbers'}" + (
            " or nulls" if nullable else ""
        )
        value = self._get(key, wanted, True)
        if value is None:
            return []

        def fits(v: Any) -> bool:
            if v is None:
                return nullable
            return _is_int(v) if integers else _is_number(v) and math.isfinite(v)

        if not isinstance(value, list) or not all(fits(v) for v in value):
            self._fail(key, wanted, _shown(value))
        return list(value)

    @overload
    def record(self, key: str, *, optional: Literal[False] = ...) -> Fields: ...
    @overload
    def record(self, key: str, *, optional: bool) -> Fields | None: ...
    def record(self, key: str, *, optional: bool = False) -> Fields | None:
        value = self._get(key, "a JSON object", optional)
        if value is None:
            return None
        return Fields(value, self.source, self._name(key))

    def records(self, key: str) -> list[Fields]:
        value = self._get(key, "a list of JSON objects", False)
        if not isinstance(value, list) or not value:
            self._fail(key, "a non-empty list of JSON objects", _shown(value))
        return [Fields(v, self.source, f"{self._name(key)}[{i}]") for i, v in enumerate(value)]

    def raw(self, key: str, *, optional: bool = False) -> Any:
        """The field as stored, for a caller that checks it itself (and names it)."""
        return self._get(key, "a value", optional)

    def fail(self, key: str | None, wanted: str, received: Any) -> NoReturn:
        """A caller's own check failed: the same message, naming this file and field."""
        self._fail(key, wanted, _shown(received))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _range(low: float, high: float) -> str:
    if low > -math.inf and high < math.inf:
        return f" in [{low:g}, {high:g}]"
    if low > -math.inf:
        return f" >= {low:g}"
    return f" <= {high:g}" if high < math.inf else ""


def _shown(value: Any) -> str:
    text = json.dumps(value) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def parse_json(text: bytes | str, source: Path, what: str) -> Fields:
    """``text`` (the contents of ``source``) as a JSON object."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelFileError(f"{source}: not readable as a {what} (bad JSON: {exc}).") from None
    return Fields(value, source)


def _inside_its_folder(path: Path, what: str) -> None:
    """A run folder's file that is a link out of its folder is refused, never followed: a
    folder handed over by someone else must not make convnet read elsewhere."""
    if path.is_symlink() and not path.resolve().is_relative_to(path.parent.resolve()):
        raise ModelFileError(
            f"{path}: is a link to {path.resolve()}, outside {path.parent}; convnet reads a "
            f"{what} only inside its folder."
        )


def read_json(path: Path, what: str, *, hint: str = "") -> Fields:
    """The JSON object in ``path``; ``what`` names it in messages, ``hint`` says what to
    do when the file is missing."""
    _inside_its_folder(path, what)
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such {what}.{hint}") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a {what}.") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    return parse_json(text, path, what)


def read_npz(path: Path, what: str, *, hint: str = "") -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` at ``path``, read in full (so a damaged member is found
    here, by its CRC, not later), without pickle, its size checked first (:mod:`convnet.
    limits`)."""
    _inside_its_folder(path, what)
    try:
        return limits.read_npz(path)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such {what}.{hint}") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path}: is a folder, not a {what}.") from None
    except _NPZ_DAMAGE as exc:
        raise ModelFileError(
            f"{path}: damaged, or not an .npz archive: not readable as a {what} ({exc})."
        ) from None


def history(fields: Fields) -> History:
    """A :class:`History` from :meth:`History.as_dict`'s form, every column checked and
    of one length (a column an older convnet did not write is filled with None; the best
    epoch's figures stored beside them are derived again, not read)."""
    epochs = fields.column("epoch", integers=True, nullable=False)
    columns: dict[str, list] = {"epoch": epochs}
    for name in PER_EPOCH[1:]:
        column = fields.column(name, nullable=name not in ("train_cost", "eta", "seconds"))
        if name in fields and len(column) != len(epochs):
            fields.fail(name, f"{len(epochs)} entries (one per epoch)", len(column))
        columns[name] = column if name in fields else [None] * len(epochs)
    return History(**columns, stopped=fields.text("stopped", optional=True))
