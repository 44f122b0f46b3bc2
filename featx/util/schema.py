"""What a file featx reads from elsewhere (bundle.json, a cache's attributes) may hold, checked
before any of it is used: each value's type, range, length and depth. A crafted value is refused
in one line naming its field, instead of failing wherever it is first used (a float where a
count is formatted, a size that asks for terabytes, nesting that exhausts the recursion limit).

A schema is built of the specs below; ``check(value, spec)`` raises ``Invalid`` for the first
field that does not fit. Values may be plain Python (from JSON) or NumPy scalars (from HDF5).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Deeper than anything featx writes (bundle.json nests five levels), and far below the recursion
# limit that json's parser and any recursive walk of the value would reach.
MAX_DEPTH = 32
MAX_ITEMS = 1 << 20   # entries of one list or keys of one object
MAX_TEXT = 1 << 16    # characters of one string
HUGE = 1 << 53        # the largest count or size accepted: exact as a JSON number, and past any real one


class Invalid(ValueError):
    """``field`` (``backbone.feature_dim``, ``/labels``) is not what featx writes there."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where} {problem}" if where else problem.removeprefix("is "))


def shown(value: Any, limit: int = 40) -> str:
    """A value as a message shows it: repr (so a newline stays ``\\n``), cut to ``limit``."""
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _whole(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _number(v: Any) -> bool:
    return _whole(v) or isinstance(v, float | np.floating)


class Spec:
    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Anything(Spec):
    """Any value (its depth is ``check``'s)."""

    def check(self, value: Any, where: str) -> None:
        return None


ANY = Anything()


@dataclass(frozen=True)
class Int(Spec):
    low: int = 0
    high: int = HUGE

    def check(self, value: Any, where: str) -> None:
        if not (_whole(value) and self.low <= value <= self.high):
            raise Invalid(where, f"is {shown(value)}, not a whole number from {self.low} to {self.high}")


@dataclass(frozen=True)
class Num(Spec):
    """A number from ``low`` to ``high``, finite unless ``finite`` is False (then NaN, too:
    a diverged trial's loss, which is shown, never computed with)."""

    low: float = -math.inf
    high: float = math.inf
    finite: bool = True

    def check(self, value: Any, where: str) -> None:
        ok = _number(value) and (self.low <= value <= self.high if math.isfinite(value) else
                                 not self.finite and (math.isnan(value) or self.low <= value <= self.high))
        if not ok:
            limits = (f" from {self.low:g} to {self.high:g}" if math.isfinite(self.high) else
                      f" of {self.low:g} or more" if math.isfinite(self.low) else "")
            raise Invalid(where, f"is {shown(value)}, not a {'finite ' * self.finite}number{limits}")


@dataclass(frozen=True)
class Flag(Spec):
    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool | np.bool_):
            raise Invalid(where, f"is {shown(value)}, not true or false")


# A file name alone: what a name from a file is joined to a folder as.
_NAME = re.compile(r"[^/\\\x00]*")


@dataclass(frozen=True)
class Text(Spec):
    """A string of ``shortest`` to ``longest`` characters; one of ``choices`` where given; a
    file name and no path (no ``/``, ``\\``, ``..``) where ``name``."""

    shortest: int = 0
    longest: int = MAX_TEXT
    choices: tuple[str, ...] = ()
    name: bool = False

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise Invalid(where, f"is {shown(value)}, not a text")
        if "\x00" in value:  # no name holds one, and a path with one ends in a ValueError
            raise Invalid(where, f"is {shown(value)}, which holds a NUL character")
        if not self.shortest <= len(value) <= self.longest:
            raise Invalid(where, f"is {len(value)} characters long, not {self.shortest} to {self.longest}")
        if self.choices and value not in self.choices:
            raise Invalid(where, f"is {shown(value)}, none of {', '.join(self.choices)}")
        if self.name and (not _NAME.fullmatch(value) or value in (".", "..")):
            raise Invalid(where, f"is {shown(value)}, not a file name")


@dataclass(frozen=True)
class Nullable(Spec):
    inner: Spec

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)


@dataclass(frozen=True)
class Items(Spec):
    """A list of ``item``s: ``length`` of them where given, else up to ``most``."""

    item: Spec
    length: int | None = None
    most: int = MAX_ITEMS

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list):
            raise Invalid(where, f"is {shown(value)}, not a list")
        if (self.length is not None and len(value) != self.length) or len(value) > self.most:
            wanted = self.length if self.length is not None else f"at most {self.most}"
            raise Invalid(where, f"has {len(value)} entries, not {wanted}")
        for i, v in enumerate(value):
            self.item.check(v, f"{where}[{i}]")


@dataclass(frozen=True)
class Grid(Spec):
    """A table of whole numbers of 0 or more, rows of one length (a confusion matrix): checked
    by NumPy at once, as a thousand classes make a million entries."""

    def check(self, value: Any, where: str) -> None:
        try:
            a = np.asarray(value)
        except ValueError:  # rows of different lengths
            a = None
        if a is None or a.ndim != 2 or (a.size and (a.dtype.kind not in "iu" or a.min() < 0)):
            raise Invalid(where, "is not a table of counts")


def _key(where: str, key: str) -> str:
    part = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_+]*", key) else f"[{shown(key)}]"
    return part if not where else f"{where}{part}" if part.startswith("[") else f"{where}.{part}"


@dataclass(frozen=True)
class Record(Spec):
    """An object: the ``fields`` it may hold (those in ``required`` always), each of its spec;
    keys of no field (a later featx's) of ``other``, or refused where that is None."""

    fields: dict[str, Spec] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    other: Spec | None = ANY
    most: int = MAX_ITEMS

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise Invalid(where, f"is {shown(value)}, not an object")
        if len(value) > self.most:
            raise Invalid(where, f"has {len(value)} entries, more than {self.most}")
        for key in self.required:
            if key not in value:
                raise Invalid(_key(where, key), "is missing")
        for key, v in value.items():
            if not isinstance(key, str):
                raise Invalid(where, f"has a key {shown(key)} that is not a text")
            spec = self.fields.get(key, self.other)
            if spec is None:
                raise Invalid(_key(where, key), "is not a field featx knows")
            spec.check(v, _key(where, key))


@dataclass(frozen=True)
class Either(Spec):
    """``first``, or else ``second`` (whose complaint is the one told)."""

    first: Spec
    second: Spec

    def check(self, value: Any, where: str) -> None:
        try:
            self.first.check(value, where)
        except Invalid:
            self.second.check(value, where)


@dataclass(frozen=True)
class JsonText(Spec):
    """A string holding JSON (HDF5 has no nested attributes), which parses to ``inner``."""

    inner: Spec

    def check(self, value: Any, where: str) -> None:
        Text().check(value, where)
        self.inner.check(load_json(value, where), where)


def _too_deep(value: Any) -> bool:
    stack = [(value, 1)]
    while stack:  # not recursive: a recursive walk is what deep nesting is made to break
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > MAX_DEPTH:
                return True
            stack.extend((child, depth + 1) for child in (v.values() if isinstance(v, dict) else v)
                         if isinstance(child, dict | list))
    return False


def load_json(text: str, where: str = "") -> Any:
    """JSON text as Python values; ``Invalid`` where it is no JSON, or nests deeper than
    ``MAX_DEPTH`` (json's own parser ends in a RecursionError at about a thousand levels)."""
    deep = f"nests deeper than {MAX_DEPTH} levels"
    try:
        value = json.loads(text)
    except RecursionError:
        raise Invalid(where, deep) from None
    except ValueError as e:  # numbers of more than 4,300 digits, too
        raise Invalid(where, f"is not JSON ({str(e).splitlines()[0][:80]})") from None
    if _too_deep(value):
        raise Invalid(where, deep)
    return value


def check(value: Any, spec: Spec, where: str = "") -> None:
    """Raise ``Invalid`` naming the first field of ``value`` that ``spec`` does not allow."""
    if _too_deep(value):
        raise Invalid(where, f"nests deeper than {MAX_DEPTH} levels")
    spec.check(value, where)


def fits(value: Any, spec: Spec) -> bool:
    try:
        spec.check(value, "")
    except Invalid:
        return False
    return True
