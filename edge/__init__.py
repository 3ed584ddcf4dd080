"""gemma3n-edge, torch-free side: artifact formats, the host simulator, CLI, install.

Nothing under `edge/` may import torch at module level: a phone has no torch, and the
simulator mirrors the phone. Code that needs the torch side (the PyTorch reference, the
converter verbs) reaches it through entry points: edge/plugins.py.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gemma3n-edge")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
