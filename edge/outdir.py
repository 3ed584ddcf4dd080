"""Output directories: written in a staging directory beside them, swapped in by rename, and
never replacing (or deleting) anything the tool did not write.

The rule, for every directory-shaped output (`build --out`, `slice --export-hf`):
  * a new or empty directory is fine;
  * an existing one is replaced only if its record (`manifest.json` for artifacts, the slice
    record for a sliced checkpoint) parses as ours *and* it holds nothing but the files that
    record lists; anything else is refused, before any work is done, naming what is in the way;
  * never the current directory or one holding an input being read (the checkpoint);
  * the old copy is removed file by file (only the listed files), never by `rmtree`.
Staging directories carry the writer's pid, so one left by a killed run (kill -9) is removed
by the next run into the same parent once that pid is gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterable
from pathlib import Path

from edge.errors import UserError
from edge.fileio import fsync_dir

# `owned(out) -> set of names` (files the record lists, the record included) or None when `out`
# holds no record of ours. It may raise UserError for a record that is ours but unreadable.
Owned = Callable[[Path], "set[str] | None"]

_STAGING = ".{name}.building-{pid}-"
_OLD = ".{name}.old-{pid}-"


def check_out_dir(out: Path, owned: Owned, *, inputs: Iterable[Path] = (), what: str = "artifact directory",
                  flag: str = "--out") -> None:
    """Refuse an `out` that the tool may not replace (see the module docstring)."""
    out = Path(out)
    if out.is_symlink():
        raise UserError(f"{flag} {out} is a symbolic link; pass the directory it points to, or a new path")
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out} is a file, not a directory; choose a new directory for the {what}")
    target = out.resolve()
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise UserError(f"{flag} {out} is the current directory (or holds it); choose a new directory, "
                        f"e.g. {flag} build/out")
    if target == Path(target.anchor):
        raise UserError(f"{flag} {out} is a filesystem root; choose a new directory for the {what}")
    for src in inputs:
        src = Path(src).resolve()
        if target == src or target in src.parents:
            raise UserError(f"{flag} {out} holds {src}, which this run reads; choose a directory outside it")
    if not out.is_dir():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    listed = owned(out)
    if listed is None:
        raise UserError(f"{flag} {out} exists and holds {_some(entries)} but no record of gemma3n-edge (it is "
                        f"not an earlier {what} from this tool); choose a new or empty directory — nothing was changed")
    foreign = [n for n in entries if n not in listed or not (out / n).is_file() or (out / n).is_symlink()]
    if foreign:
        raise UserError(f"{flag} {out} is an earlier {what} but also holds {_some(foreign)}, which gemma3n-edge "
                        f"did not write; move them out or choose another directory — nothing was changed")


def _some(names: list[str], n: int = 5) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path, name: str) -> list[Path]:
    """Remove staging/old directories beside `parent/name` whose writing process is gone."""
    return [p for pattern in (_STAGING, _OLD)
            for p in clean_dead_pid_dirs(parent, pattern.split("{pid}")[0].format(name=name))]


def clean_dead_pid_dirs(parent: Path, prefix: str) -> list[Path]:
    """Remove directories `parent/<prefix><pid>-*` whose process `pid` is gone (a kill -9's leftovers)."""
    removed = []
    if not Path(parent).is_dir():
        return removed
    for p in Path(parent).glob(glob.escape(prefix) + "*"):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if p.is_dir() and not p.is_symlink() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def make_staging(out: Path) -> Path:
    """A fresh staging directory beside `out` (same filesystem, so the swap is a rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out.parent, out.name)
    staging = out.parent / (_STAGING.format(name=out.name, pid=os.getpid()) + secrets.token_hex(4))
    staging.mkdir(mode=0o755)
    return staging


def swap_in(staging: Path, out: Path, owned: Owned, *, inputs: Iterable[Path] = (), what: str = "artifact directory",
            flag: str = "--out") -> None:
    """Replace `out` by the finished `staging` with renames; the old copy's own files are then removed."""
    check_out_dir(out, owned, inputs=inputs, what=what, flag=flag)  # again: the user may have added files since
    old = None
    if out.exists():
        listed = owned(out) or set()
        old = out.parent / (_OLD.format(name=out.name, pid=os.getpid()) + secrets.token_hex(4))
        os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    fsync_dir(out.parent)
    if old is not None:
        for n in listed:
            with contextlib.suppress(FileNotFoundError):
                (old / n).unlink()
        try:
            old.rmdir()
        except OSError:  # something appeared in the old copy after the check: keep it, say where
            print(f"note: kept {old}: it holds files gemma3n-edge did not write", flush=True)


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises SystemExit in the main thread, so `except BaseException` cleanup runs (kill -9 cannot be
    caught: its leftovers are removed by `clean_stale` on the next run)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
