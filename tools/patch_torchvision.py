"""Guard torchvision's two unguarded fake-op registrations (nms, qnms).

torchvision 0.28.0 from PyPI is built for the CUDA torch; beside the local CPU torch
2.13.0 wheel its compiled ops do not load, and `import torchvision` then dies with
"operator torchvision::nms does not exist" because `_meta_registrations.py` registers
fake kernels for nms/qnms without the `_has_ops()` guard its other registrations use.
We only need torchvision's pure-Python parts (timm's transforms), so the fix is to add
that guard. Idempotent.
"""

import importlib.util
import pathlib
import re
import sys

MARK = "# guarded by gemma3n-edge"


def main() -> int:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        print("torchvision is not installed", file=sys.stderr)
        return 1
    path = pathlib.Path(spec.submodule_search_locations[0]) / "_meta_registrations.py"
    text = path.read_text()
    if MARK in text:
        return 0
    pattern = re.compile(r'^@torch\.library\.register_fake\("torchvision::(\w+)"\)$', re.M)
    new, n = pattern.subn(
        lambda m: f'@(torch.library.register_fake("torchvision::{m.group(1)}") '
        f"if torchvision.extension._has_ops() else (lambda fn: fn))  {MARK}",
        text,
    )
    if n == 0:
        print(f"no unguarded registration found in {path}; torchvision changed?", file=sys.stderr)
        return 1
    path.write_text(new)
    print(f"patched {n} fake-op registrations in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
