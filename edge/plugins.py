"""The torch side, reached without importing it: `converters` registers what edge needs from it
as entry points (pyproject.toml, group `gemma3n_edge`), so no module under edge/ imports
`converters` or torch, and a phone-only install fails with a message naming the extra.

| entry point | what it is |
|-------------|------------|
| `verb.<name>` | a CLI verb module (NAME, HELP, configure, run) that needs torch: build, slice, demo |
| `reference`   | the class running the HF model in fp32 for parity (converters/reference.py) |
"""

from __future__ import annotations

from importlib.metadata import entry_points

from edge.errors import UserError

GROUP = "gemma3n_edge"
INSTALL = ("pip install 'gemma3n-edge[convert]' (in a checkout: `make venv`, which also takes the CPU build "
           "of torch from local disk)")


def load(name: str):
    """The object registered as `name`, imported now; a UserError if nothing registers it."""
    found = entry_points(group=GROUP, name=name)
    if not found:
        raise UserError(f"nothing provides {name!r} (entry point group {GROUP!r}): the converter side of "
                        f"gemma3n-edge is not installed; {INSTALL}")
    return next(iter(found)).load()


def verb_names() -> list[str]:
    """The verbs the torch side registers, by name (nothing imported)."""
    return sorted(ep.name.removeprefix("verb.") for ep in entry_points(group=GROUP) if ep.name.startswith("verb."))
