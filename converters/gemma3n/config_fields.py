"""What every Gemma 3n config section shares: the error type, typed fields and their checks.

A field is declared with `_f(default, kind)`; `_check_types` checks each field against its kind
and names the bad one by its path (`text_config.head_dim`) in an `_Invalid`, to which
`Gemma3nConfig.from_hf` adds the file name (converters/gemma3n/config.py).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import field
from typing import Any, ClassVar

from edge.errors import UserError


class ConfigError(UserError):
    """config.json is missing, unreadable, or not a consistent Gemma 3n config."""


class _Invalid(ConfigError):
    """One bad field, named by its path (`text_config.head_dim`); from_hf adds the file name."""

    def __init__(self, field_path: str, problem: str,
                 fix: str = "Fix that field in config.json (or re-export the checkpoint with transformers)."):
        super().__init__(f"{field_path}: {problem}")
        self.fix = fix


def _tuple(value: Any) -> Any:
    """Lists (nested too) to tuples, so frozen configs compare and never alias caller data."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuple(v) for v in value)
    return value


def _lists(value: Any) -> Any:
    """Tuples back to lists for JSON / transformers."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------- field type checks

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_KINDS: dict[str, tuple[str, Any]] = {
    "int": ("an integer", _is_int),
    "int?": ("an integer or null", lambda v: v is None or _is_int(v)),
    "num": ("a number", _is_num),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "dict?": ("an object or null", lambda v: v is None or isinstance(v, dict)),
    "ints": ("a list of integers", lambda v: isinstance(v, tuple) and all(_is_int(x) for x in v)),
    "nums": ("a list of numbers", lambda v: isinstance(v, tuple) and all(_is_num(x) for x in v)),
    "strs": ("a list of strings", lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v)),
    "int|ints?": ("an integer, a list of integers or null",
                  lambda v: v is None or _is_int(v) or (isinstance(v, tuple) and all(_is_int(x) for x in v))),
    "pairs": ("a list of [int, int] pairs",
              lambda v: isinstance(v, tuple) and all(isinstance(p, tuple) and len(p) == 2
                                                     and all(_is_int(x) for x in p) for p in v)),
}


def _check_types(cfg: Any, section: str) -> None:
    prefix = f"{section}." if section else ""
    for f in dataclasses.fields(cfg):
        kind = f.metadata.get("kind")
        if kind is None:
            continue
        what, ok = _KINDS[kind]
        value = getattr(cfg, f.name)
        if not ok(value):
            raise _Invalid(f"{prefix}{f.name}", f"must be {what}, got {json.dumps(_lists(value), default=repr)}")


def _f(default: Any, kind: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"kind": kind}, **kw)
    return field(default=default, metadata={"kind": kind}, **kw)


def _positive(cfg: Any, section: str, *names: str) -> None:
    for n in names:
        if getattr(cfg, n) <= 0:
            raise _Invalid(f"{section}.{n}", f"must be positive, got {getattr(cfg, n)}")


class _Section:
    """A sub-config: written back as its HF dict (with model_type) by to_hf_dict()."""

    model_type: ClassVar[str]

    def to_hf_dict(self) -> dict[str, Any]:
        d = {f.name: _lists(copy.deepcopy(getattr(self, f.name))) for f in dataclasses.fields(self)}
        return {**d, "model_type": self.model_type}
