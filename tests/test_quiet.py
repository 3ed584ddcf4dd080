"""Quiet by default, loud on request (edge/quiet.py): known noise is dropped by message, anything
else (a real warning or error) always gets through."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from edge import quiet

NATIVE_NOISE_SEEN = [  # lines the native libraries printed on a normal run (recorded here)
    "INFO: [environment.cc:36] Creating LiteRT environment with options",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "I0000 00:00:1764767603.788000    3382 port.cc:153] oneDNN custom operations are on.",
    "I1203 13:13:23.788000 3382 flatbuffer_export.cc:4410] Estimated count of arithmetic ops: 1.2 M  ops",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "W1203 13:13:23.788000 3382 litert_lm_loader.cc:142] Section not found: SP_Tokenizer",
]
REAL = [  # must never be dropped
    "ERROR: [compiled_model.cc:120] Failed to apply delegate",
    "E0000 00:00:1764767603.788000    3382 engine.cc:88] NOT_FOUND: Token id 645 is out of range.",
    "W1203 13:13:23.788000 3382 engine.cc:12] Something new the runtime warns about",
    "error: the checkpoint has no config.json",
    "[2/7] decoder: lower 3 signatures + splice weights ... 12.3 s",
]


def test_native_filter_drops_known_noise_and_keeps_the_rest():
    out = []
    f = quiet.LineFilter(out.append)
    stream = "\n".join(NATIVE_NOISE_SEEN[:3] + REAL[:2] + NATIVE_NOISE_SEEN[3:] + REAL[2:]) + "\n"
    data = stream.encode()
    for i in range(0, len(data), 7):  # arbitrary chunking: lines are reassembled before judging
        f.feed(data[i : i + 7])
    f.feed(b"partial line without end")
    f.close()
    assert b"".join(out).decode().splitlines() == REAL + ["partial line without end"]


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_python_filters_drop_the_listed_messages_only(monkeypatch):
    monkeypatch.delenv(quiet.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(quiet, "_installed", False)
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    before = [list(lg.filters) for lg in loggers]
    keep = _Keep()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet.install_python_filters()  # after simplefilter("always"): its ignores come first
            warnings.warn_explicit("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning,
                                   "copyreg.py", 105, module="copyreg")
            warnings.warn_explicit("something else is deprecated", FutureWarning, "copyreg.py", 105, module="copyreg")
        assert [str(w.message) for w in caught] == ["something else is deprecated"]
        noise = {"torchao": "Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load",
                 "torch.utils._pytree": "<enum 'KernelPreference'> is an Enum subclass and is now natively "
                                        "supported by torch.compile as an opaque value type."}
        for lg in loggers:
            lg.addHandler(keep)
            lg.warning(noise[lg.name])
            lg.warning("a real problem")
            lg.removeHandler(keep)
        assert keep.messages == ["a real problem", "a real problem"]
    finally:  # leave logging as it was for the other tests
        for lg, filters in zip(loggers, before):
            lg.filters[:] = filters


SCRIPT = textwrap.dedent(
    """
    import os, sys
    from edge import quiet
    quiet.filter_native_stderr()
    os.write(2, b"INFO: [environment.cc:36] Creating LiteRT environment\\n")
    os.write(2, b"ERROR: [engine.cc:1] a native error\\n")
    print("progress 50%", end="\\r", file=sys.stderr, flush=True)
    print("python says hi", file=sys.stderr)
    """
)


@pytest.mark.parametrize("verbose", [False, True])
def test_cli_stderr_filter_in_a_real_process(verbose):
    env = {k: v for k, v in os.environ.items() if k not in (quiet.VERBOSE_ENV, "GEMMA3N_EDGE_NATIVE_LOG")}
    if verbose:
        env[quiet.VERBOSE_ENV] = "1"
    p = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, env=env, timeout=60)
    stderr = p.stderr.decode()
    assert p.returncode == 0, stderr
    assert "ERROR: [engine.cc:1] a native error" in stderr
    assert "progress 50%" in stderr and "\r" in stderr and "python says hi" in stderr  # a bar's \r kept
    assert ("Creating LiteRT environment" in stderr) == verbose
