"""Keep LiteRT's native INFO logging off the terminal, but keep it for error messages.

The LiteRT runtime logs accelerator registration and plugin probing to file descriptor 2
on every model load, with no switch to turn it off. `native_stderr()` redirects fd 2 to
a temporary file for the duration of a block; the captured text is available afterwards
(`.text`, `.tail()`) so a load failure can show what the runtime said. `--verbose` (or
GEMMA3N_EDGE_VERBOSE=1, see edge/quiet.py) lets it through instead.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

from edge.quiet import verbose


class CapturedLog:
    def __init__(self) -> None:
        self.text = ""

    def tail(self, lines: int = 12) -> str:
        """The last error lines (with their "└" continuations); INFO/WARNING chatter dropped."""
        kept, keep_cont = [], False
        for ln in self.text.splitlines():
            if ln.startswith(("ERROR", "E0000", "F0000")):
                kept.append(ln)
                keep_cont = True
            elif ln.startswith("\u2514") and keep_cont:
                kept.append(ln)
            else:
                keep_cont = False
        return "\n".join(kept[-lines:])


@contextmanager
def native_stderr() -> Iterator[CapturedLog]:
    log = CapturedLog()
    if verbose():
        yield log
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): nothing to hide
        yield log
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield log
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.text = tmp.read().decode("utf-8", "replace")


_warmed = False


def warm_up_tensor_buffers() -> None:
    """Create the tensor-buffer wrapper's own LiteRT environment now, with its log captured.

    The wrapper creates a process-wide environment on the first buffer write (logging the
    whole accelerator registration again); doing it once at load time keeps that out of
    the middle of streamed output.
    """
    global _warmed
    if _warmed:
        return
    import numpy as np
    from ai_edge_litert.tensor_buffer import TensorBuffer

    with native_stderr():
        a = np.zeros(16, dtype=np.float32)
        TensorBuffer.create_from_host_memory(a).write(a)
    _warmed = True
