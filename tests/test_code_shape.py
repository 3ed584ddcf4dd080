"""Issue 20's shape rules over the project's own sources (tools/check_code_shape.py), and proof
that the checker catches each rule on a made-up package."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import check_code_shape as shape  # noqa: E402

def test_project_keeps_its_shape():
    assert shape.violations() == {}


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_catches_each_rule(tmp_path):
    long_body = "\n".join(f"    x{i} = {i}" for i in range(61))
    _write(tmp_path, {
        "edge/__init__.py": "",
        "edge/lazy.py": "def f():\n    from converters import a\n    import torch\n",
        "edge/ok.py": "import numpy\nfrom edge import lazy\n",
        "converters/__init__.py": "",
        "converters/a.py": "from converters.b import g\n",
        "converters/b.py": "def g():\n    from . import a\n",
        "converters/long.py": f"def long():\n{long_body}\n" + "\n" * 440,
    })
    found = set(shape.violations(tmp_path))
    assert found == {
        "forbidden: edge/lazy.py: imports converters.a",
        "forbidden: edge/lazy.py: imports torch",
        "cycle: converters.a <-> converters.b",
        "long function: converters.long.long",
        "long file: converters/long.py",
    }


def test_checker_passes_a_clean_package(tmp_path):
    _write(tmp_path, {"edge/__init__.py": "", "edge/a.py": "import numpy\n\n\ndef f():\n    return 1\n",
                      "converters/__init__.py": "", "converters/b.py": "import torch\nfrom edge import a\n"})
    assert shape.violations(tmp_path) == {}
