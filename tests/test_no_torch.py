"""The torch-free rule: edge/ imports, shows --help and simulates with torch unimportable, and a
verb that needs torch (build) names the extra to install instead of raising.

A subprocess installs an import hook that makes `torch`, `transformers` and `litert_torch`
raise ImportError (as on a phone or a slim install), then imports every module under
edge/, runs `gemma3n-edge --help`, and runs `simulate` end to end through the LiteRT
executor on the toy artifacts (built by this test process, which may use torch).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from toy_artifacts import session_toy

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys

    BLOCKED = {"torch", "transformers", "litert_torch"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                err = ModuleNotFoundError(f"No module named {name!r} (blocked: edge/ must not need it)")
                err.name = name  # as a slim install without the convert extra raises it
                raise err
            return None

    sys.meta_path.insert(0, Block())

    import edge
    failed = {}
    for info in pkgutil.walk_packages(edge.__path__, "edge."):
        try:
            importlib.import_module(info.name)
        except ImportError as e:
            failed[info.name] = str(e)

    from edge.cli import main
    try:
        main(["--help"])
        help_rc = 0
    except SystemExit as e:
        help_rc = e.code
    rc = main(["simulate", sys.argv[1], "--prompt", "hello", "--max-tokens", "5", "--json", sys.argv[2]])
    import contextlib, io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        build_rc = main(["build", sys.argv[1], "--out", sys.argv[2] + ".out"])
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"failed": failed, "help_rc": help_rc, "rc": rc, "leaked": leaked,
                      "build_rc": build_rc, "build_err": err.getvalue()}))
    """
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return session_toy(tmp_path_factory)


def test_edge_runs_without_torch(toy, tmp_path):
    out_json = tmp_path / "run.json"
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(toy.dir), str(out_json)], capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, f"modules under edge/ that need torch at import: {report['failed']}"
    assert report["help_rc"] == 0 and "simulate" in p.stdout and "inspect" in p.stdout
    assert report["rc"] == 0 and report["leaked"] == []
    # A verb that needs the torch side says which extra to install, without a traceback.
    assert report["build_rc"] == 1, report["build_err"]
    assert "pip install 'gemma3n-edge[convert]'" in report["build_err"], report["build_err"]
    assert "Traceback" not in report["build_err"]
    run = json.loads(out_json.read_text())
    assert 1 <= len(run["token_ids"]) <= 5 and run["metrics"]["prompt_tokens"] == len(run["prompt_ids"])
    assert run["text"] in p.stdout  # the streamed text went to stdout
