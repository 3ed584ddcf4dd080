"""`gemma3n-edge apk [--out F]`: build, align, sign and verify the Android demo APK."""

from __future__ import annotations

from pathlib import Path

NAME = "apk"
HELP = "Build the Android demo APK (installs the Debian toolchain on first use; no Gradle, no NDK)."


def configure(parser) -> None:
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the APK (default: build/android/gemma3n-edge-demo.apk)")
    from edge.commands._args import add_json_flag

    add_json_flag(parser)


def run(args) -> int:
    from edge.device import apk
    from edge.commands._args import messages_to_stderr, print_json

    with messages_to_stderr(args.json):
        result = apk.build(args.out)
    if args.json:
        print_json({"apk": str(result.path), "bytes": result.bytes, "sha256": result.sha256})
    else:
        print(f"{result.path}  {result.bytes} bytes  sha256 {result.sha256}")
    return 0
