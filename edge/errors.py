"""The one exception type users see: a message that names the problem and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """Bad input or environment. The CLI prints the message without a traceback."""


def lookup(table: Mapping[str, T], name: str, what: str, error: type[UserError] = UserError) -> T:
    """`table[name]`; an unknown name raises `error` listing the names there are (the fix)."""
    try:
        return table[name]
    except KeyError:
        raise error(f"unknown {what} {name!r}: choose one of {', '.join(table)}") from None
