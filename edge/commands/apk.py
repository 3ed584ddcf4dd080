"""`gemma3n-edge apk [--out F]`: build, align, sign and verify the Android demo APK."""

from __future__ import annotations

from pathlib import Path

NAME = "apk"
HELP = "Build the Android demo APK (installs the Debian toolchain on first use; no Gradle, no NDK)."


def configure(parser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the APK (default: build/android/gemma3n-edge-demo.apk)")


def run(args) -> int:
    from edge.android import apk

    result = apk.build(args.out)
    print(f"{result.path}  {result.bytes} bytes  sha256 {result.sha256}")
    return 0
