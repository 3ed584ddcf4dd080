"""`gemma3n-edge install DIR [--serial S]`: check the phone, install the demo APK, push the bundle."""

from __future__ import annotations

from pathlib import Path

NAME = "install"
HELP = "Install the demo app on an Android phone with adb and push DIR/model.litertlm to it."


def configure(parser) -> None:
    parser.add_argument("dir", type=Path, help="artifact directory holding model.litertlm (or the .litertlm file)")
    parser.add_argument("--serial", default=None, help="device serial (see `adb devices`) when several are attached")
    parser.add_argument("--apk", type=Path, default=None,
                        help="APK to install (default: build/android/gemma3n-edge-demo.apk, rebuilt if stale)")
    parser.add_argument("--force", action="store_true",
                        help="install even if the phone's RAM looks too small for the bundle (estimate)")
    parser.add_argument("--yes", action="store_true", help="when adb is missing (as root), install Debian's adb package without asking")
    from edge.commands._args import add_json_flag

    add_json_flag(parser)


def run(args) -> int:
    from edge.device import install
    from edge.commands._args import messages_to_stderr, print_json

    with messages_to_stderr(args.json):
        done = install.install(args.dir, serial=args.serial, apk=args.apk, force=args.force, assume_yes=args.yes)
    if args.json:
        print_json(done)
    return 0
