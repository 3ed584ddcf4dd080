"""Quiet by default, loud on request: known third-party noise is filtered where it is made.

A normal run of `gemma3n-edge` prints its stages, progress bars and results. The libraries
under it add lines a user cannot act on; each is listed here by its message, so a real
warning or error (anything not listed) always gets through:

- Python logging and warnings: filters on the emitting logger / warning category + module.
- Native C++ logs (LiteRT, LiteRT-LM, the MLIR converter, XNNPACK) go to file descriptor 2
  with no switch for most of them, so the CLI routes fd 2 through a line filter that drops
  their INFO level and the listed warnings (`filter_native_stderr`). Python's own
  `sys.stderr` (progress bars, our messages) bypasses it.

`--verbose` on any verb, or GEMMA3N_EDGE_VERBOSE=1, turns all of this off.
"""

from __future__ import annotations

import atexit
import io
import logging
import os
import re
import sys
import threading
import warnings

VERBOSE_ENV = "GEMMA3N_EDGE_VERBOSE"

# (logger, message regex). torchao probes for CUDA kernels the CPU build does not have;
# torchao registers Enums as pytree constants, which torch now deprecates.
LOGGING_NOISE = (
    ("torchao", r"^Failed to load \S*/torchao/_C_\w+\S*\.so: "),
    ("torch.utils._pytree", r"^<enum '[^']+'> is an Enum subclass and is now natively supported by torch\.compile"),
    # ai-edge-quantizer replaces its default rule for an op type with ours (the point of the recipe).
    ("absl", r"^Overwrite operation \w+ config under scope_regex "),
)
# (category, module, message regex). torch.export deep-copies LeafSpec objects while
# litert-torch lowers each signature.
WARNING_NOISE = (
    (FutureWarning, "copyreg", r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)
# Lines of the native libraries' stderr: their INFO level (LiteRT "INFO: [file.cc:N] ...",
# absl/glog "I1203 13:13:23.788 ..." incl. "I0000 00:00:..."), and warnings known to be harmless.
NATIVE_NOISE = (
    r"^INFO: ",
    r"^I\d{4} [\d:.]+ +\d+ [\w.\-]+:\d+\] ",
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$",
    r"^(WARNING: )+Logging before InitGoogle\(\) is written to STDERR$",
    # LiteRT-LM looks for optional sections (the bundle has no HF tokenizer, no MTP drafter, ...).
    r"^W\d{4} [\d:. ]+\d+ litert_lm_loader\.cc:\d+\] (Section not found|.*not found.* Skipping|"
    r".*not found for prefer activation type)",
    # LiteRT probes vendor compiler plugins (OpenVINO, ...) and NPUs that are not installed.
    r"^WARNING: \[compiler_plugin\.cc:\d+\] ",
    r"^(WARNING: )?\[npu_registry\.cc:\d+\] NPU accelerator could not be loaded",  # prefix may come apart
    # Our embedders carry prefill signatures too; the engine uses the first (decode_*) as intended.
    r"^W\d{4} [\d:. ]+\d+ embedding_lookup_text\.cc:\d+\] No signature key was provided",
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1" or os.environ.get("GEMMA3N_EDGE_NATIVE_LOG") == "1"


class _DropMessages(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


_installed = False


def install_python_filters() -> None:
    """Logging and warnings filters for LOGGING_NOISE / WARNING_NOISE (idempotent, no-op when verbose)."""
    global _installed
    if _installed or verbose():
        return
    for logger, pattern in LOGGING_NOISE:
        logging.getLogger(logger).addFilter(_DropMessages(pattern))
    for category, module, message in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    _installed = True


_NATIVE = re.compile("|".join(f"(?:{p})" for p in NATIVE_NOISE))


def is_native_noise(line: str) -> bool:
    return bool(_NATIVE.search(line))


class LineFilter:
    """Bytes in, lines out: complete lines that are not noise go to `write`; a partial line
    waits for its end (native loggers write whole lines)."""

    def __init__(self, write) -> None:
        self.write = write
        self.pending = b""

    def feed(self, data: bytes) -> None:
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()
        kept = [ln for ln in lines if not is_native_noise(ln.decode("utf-8", "replace"))]
        if kept:
            self.write(b"".join(ln + b"\n" for ln in kept))

    def close(self) -> None:
        if self.pending and not is_native_noise(self.pending.decode("utf-8", "replace")):
            self.write(self.pending)
        self.pending = b""


def filter_native_stderr() -> None:
    """Route fd 2 through LineFilter for the rest of the process (CLI entry only: it rebinds
    sys.stderr to the real terminal). At exit, fd 2 goes to /dev/null before C++ static
    destructors log their teardown."""
    if verbose():
        return
    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): nothing to filter
        return
    sys.stderr = io.TextIOWrapper(open(os.dup(real), "wb", buffering=0), encoding=sys.stderr.encoding or "utf-8",
                                  errors="backslashreplace", line_buffering=True, write_through=True)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    out = LineFilter(lambda b: os.write(real, b))

    def pump() -> None:
        while chunk := os.read(read_end, 1 << 16):
            out.feed(chunk)
        out.close()
        os.close(read_end)

    thread = threading.Thread(target=pump, name="native-stderr-filter", daemon=True)
    thread.start()

    def finish() -> None:
        try:
            sys.stderr.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)  # closes the pipe's last write end: the pump sees EOF
            os.close(devnull)
        except (OSError, ValueError):
            return
        thread.join(timeout=2)

    atexit.register(finish)
