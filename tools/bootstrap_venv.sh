#!/usr/bin/env bash
# Create or refresh .venv for gemma3n-edge. Idempotent: a stamp holding the hash of the
# install inputs makes a second run a no-op that takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3

inputs_hash=$(cat pyproject.toml constraints.txt tools/bootstrap_venv.sh tools/patch_torchvision.py | sha256sum | cut -c1-16)
stamp="$VENV/.gemma3n-edge-$inputs_hash"
if [ -f "$stamp" ]; then
  exit 0
fi

echo "==> setting up $VENV (first run only; ~3 min)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
# This machine kind's global pip config lists sparse file:// indexes (no directory for most
# projects), and pip warns once per index per project looked up. Drop exactly that line
# (GEMMA3N_EDGE_VERBOSE=1 keeps it); everything else, and pip's exit status, pass through.
PIP_SPARSE_INDEX_NOISE="^WARNING: Location 'file://[^']*/simple/[^/']+/' is ignored: it is neither a file nor a directory\.$"
if [ "${GEMMA3N_EDGE_VERBOSE:-}" = 1 ]; then
  pip_() { "${PIP[@]}" "$@"; }
else
  pip_() {
    { "${PIP[@]}" "$@" 2>&1 >&3 3>&- | { grep -vE "$PIP_SPARSE_INDEX_NOISE" || true; } >&2; } 3>&1
  }
fi

# torch: the CPU wheel from local disk. "torch==2.13.0+cpu" in constraints.txt means pip
# fails instead of silently downloading a multi-GB CUDA build when it is absent.
pip_ install -c constraints.txt "torch==2.13.0+cpu"
pip_ install -c constraints.txt -e ".[convert,dev]"

# torchvision: timm imports it (transformers builds Gemma 3n's vision tower with timm).
# PyPI's torchvision 0.28.0 matches torch 2.13.0 but its compiled ops do not load beside
# the CPU wheel, and two unguarded fake-op registrations then break `import torchvision`.
# We need none of its compiled ops (only transforms), so: --no-deps, then guard those two.
pip_ install -c constraints.txt --no-deps "torchvision==0.28.0"
"$VENV/bin/python" tools/patch_torchvision.py >/dev/null  # its errors go to stderr

"$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check; exit 1; }
"$VENV/bin/python" -c "from edge import quiet; quiet.filter_native_stderr(); quiet.install_python_filters(); import torch, torchvision, timm, transformers, litert_torch, ai_edge_litert, ai_edge_quantizer, litert_lm, litert_lm_builder; assert not torch.version.cuda, torch.version.cuda"
rm -f "$VENV"/.gemma3n-edge-*
touch "$stamp"
echo "==> $VENV ready (torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)'))"
