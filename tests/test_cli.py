import subprocess
import sys

from edge import __version__
from edge.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_verbs():
    out = subprocess.run([sys.executable, "-m", "edge.cli", "--help"], capture_output=True, text=True, check=True)
    assert "gemma3n-edge" in out.stdout
