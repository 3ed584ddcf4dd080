"""The Gradle-free Android toolchain, installed from Debian packages by the project itself.

What is where (ANDROID.md): Debian 12 has aapt, zipalign, apksigner, adb, dexdump,
clang-14/lld-14 and Debian's jni.h; only Debian 11 (bullseye) has a dex compiler
(`dalvik-exchange`, i.e. dx) and an `android.jar` (API 23). The bullseye packages are
reached through a *private* apt source list (its own lists and cache directories) that
points at the bullseye suite of the mirror the system already uses: the system's
sources are never edited. Their dependencies (a JRE, proguard-cli) come from bookworm.

`ensure()` is idempotent: it checks every tool first and installs only what is missing,
printing each command it runs. Installing needs root (as on CI and the dev machines).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edge.errors import UserError

# Debian 12 packages: tool name on PATH (or file) -> package that provides it.
BOOKWORM_TOOLS = {
    "aapt": "aapt",
    "zipalign": "zipalign",
    "apksigner": "apksigner",
    "dexdump": "dexdump",
    "clang-14": "clang-14",
    "ld.lld-14": "lld-14",
    "javac": "openjdk-17-jdk-headless",
    "keytool": "openjdk-17-jre-headless",
}
# Debian's jni.h for the cross build (the JDK's jni.h includes a Linux jni_md.h).
JNI_HEADER_GLOB = "/usr/include/android/nativehelper/jni.h"
JNI_HEADER_PACKAGE = "android-libnativehelper-dev"
# Only in Debian 11: dx and android.jar. Order matters for nothing (apt resolves it).
BULLSEYE_PACKAGES = (
    "dalvik-exchange",
    "libandroid-23-java",
    "libandroid-uiautomator-23-java",
    "android-sdk-platform-23",
)
ANDROID_JAR = "/usr/lib/android-sdk/platforms/android-23/android.jar"
ADB_PACKAGE = "adb"

Log = Callable[[str], None]


@dataclass(frozen=True)
class Toolchain:
    """Absolute paths of everything the APK pipeline calls."""

    aapt: str
    zipalign: str
    apksigner: str
    dx: str
    dexdump: str
    clang: str
    javac: str
    keytool: str
    android_jar: str
    jni_include: str  # directory holding Debian's jni.h (for the arm64 build)
    clang_resource_include: str  # clang's freestanding headers (stdint.h, stdarg.h…)


def _which_all() -> dict[str, str | None]:
    found = {tool: shutil.which(tool) for tool in BOOKWORM_TOOLS}
    found["dalvik-exchange"] = shutil.which("dalvik-exchange")
    return found


def _clang_resource_include(clang: str) -> str | None:
    try:
        out = subprocess.run([clang, "-print-resource-dir"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    inc = Path(out.stdout.strip()) / "include"
    return str(inc) if (inc / "stdint.h").exists() else None


def missing() -> tuple[list[str], list[str]]:
    """(bookworm packages, bullseye packages) that must be installed for the APK pipeline."""
    found = _which_all()
    bookworm = sorted({pkg for tool, pkg in BOOKWORM_TOOLS.items() if not found[tool]})
    if not glob.glob(JNI_HEADER_GLOB):
        bookworm.append(JNI_HEADER_PACKAGE)
    bullseye = [] if (found["dalvik-exchange"] and Path(ANDROID_JAR).exists()) else list(BULLSEYE_PACKAGES)
    return bookworm, bullseye


def find() -> Toolchain:
    """The installed toolchain, or a UserError naming what is missing and how to get it."""
    bookworm, bullseye = missing()
    if bookworm or bullseye:
        raise UserError(
            "the Android toolchain is incomplete (missing Debian packages: "
            f"{', '.join(bookworm + bullseye)}); run `gemma3n-edge apk` as root to install it, "
            "or call edge.device.toolchain.ensure()"
        )
    found = _which_all()
    clang = found["clang-14"]
    resource = _clang_resource_include(clang)
    if resource is None:
        raise UserError(f"{clang} has no freestanding headers (stdint.h); reinstall clang-14")
    return Toolchain(
        aapt=found["aapt"],
        zipalign=found["zipalign"],
        apksigner=found["apksigner"],
        dx=found["dalvik-exchange"],
        dexdump=found["dexdump"],
        clang=clang,
        javac=found["javac"],
        keytool=found["keytool"],
        android_jar=ANDROID_JAR,
        jni_include=str(Path(glob.glob(JNI_HEADER_GLOB)[0]).parent),
        clang_resource_include=resource,
    )


def ensure(cache_dir: Path, log: Log = print) -> Toolchain:
    """Install whatever is missing (root, apt-get), then return the toolchain. Idempotent."""
    bookworm, bullseye = missing()
    if not bookworm and not bullseye:
        return find()
    _require_root(bookworm, bullseye)
    log(f"android toolchain: installing {', '.join(bookworm + bullseye)} from Debian packages")
    _apt(["apt-get", "update"], log)
    if bookworm:
        _apt(["apt-get", "install", "-y", "--no-install-recommends", *bookworm], log)
    if bullseye:
        debs = download_bullseye(Path(cache_dir), bullseye, log)
        _apt(["apt-get", "install", "-y", "--no-install-recommends", *map(str, debs)], log)
    return find()


def ensure_adb(log: Log = print, *, assume_yes: bool = False, ask=None) -> str:
    """Path of `adb`. When missing: as root, installs Debian's package after asking on a terminal
    (or without asking with assume_yes); otherwise an error that prints the command to run."""
    path = shutil.which("adb")
    if path:
        return path
    command = f"apt-get install --no-install-recommends {ADB_PACKAGE}"
    if os.geteuid() != 0:
        raise UserError(f"adb is not installed; install it with `sudo {command}` (Debian/Ubuntu)")
    if not assume_yes:
        ask = ask or (lambda q: input(q) if sys.stdin.isatty() else "")
        if ask(f"adb is not installed. Run `apt-get update && {command}` now? [y/N] ").strip().lower() not in ("y",
                                                                                                       "yes"):
            raise UserError(f"adb is not installed; install it with `{command}` (or pass --yes to let "
                            "`gemma3n-edge install` do it)")
    log("adb not found: installing Debian's adb package")
    _apt(["apt-get", "update"], log)
    _apt(["apt-get", "install", "-y", "--no-install-recommends", ADB_PACKAGE], log)
    path = shutil.which("adb")
    if not path:
        raise UserError("installing the adb package did not put `adb` on PATH; check apt's output above")
    return path


def _require_root(bookworm: list[str], bullseye: list[str]) -> None:
    if os.geteuid() == 0:
        return
    raise UserError(
        "the Android toolchain needs Debian packages that are not installed "
        f"({', '.join(bookworm + bullseye)}) and installing them needs root: "
        "run `sudo gemma3n-edge apk` once (it installs them and is a no-op afterwards)"
    )


def _apt(cmd: list[str], log: Log, cwd: Path | None = None) -> None:
    log("$ " + " ".join(cmd))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise UserError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")


def system_mirror(sources_dir: Path = Path("/etc/apt")) -> tuple[str, str | None]:
    """(URI, Signed-By keyring) of the Debian main archive the system already uses.

    Reads deb822 `*.sources` files and one-line `sources.list` entries; skips the
    security archive (it has no bullseye `main` of the same layout).
    """
    for uri, signed_by, suites in _source_entries(sources_dir):
        if "security" in uri or not any(re.fullmatch(r"[a-z]+", s) for s in suites):
            continue
        return uri.rstrip("/"), signed_by
    raise UserError(
        f"no Debian mirror found in {sources_dir}/sources.list(.d): the bullseye packages "
        "(dalvik-exchange, android-sdk-platform-23) are fetched from the mirror apt already uses"
    )


def _source_entries(sources_dir: Path):
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                key, _, value = line.partition(":")
                if line and not line.startswith(("#", " ")) and value:
                    fields[key.strip()] = value.strip()
            if "deb" in fields.get("Types", "").split() and "main" in fields.get("Components", "").split():
                for uri in fields.get("URIs", "").split():
                    yield uri, fields.get("Signed-By"), fields.get("Suites", "").split()
    lists = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            m = re.match(r"deb\s+(\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line.strip())
            if m and "main" in m.group(4).split():
                opts = m.group(1) or ""
                signed = re.search(r"signed-by=(\S+?)[\s\]]", opts)
                yield m.group(2), signed.group(1) if signed else None, [m.group(3)]


def download_bullseye(cache_dir: Path, packages: list[str], log: Log = print) -> list[Path]:
    """Download bullseye .debs through a private source list; returns their paths."""
    root = Path(cache_dir).resolve() / "apt-bullseye"  # apt resolves relative paths against /etc/apt
    (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (root / "sources.list.d").mkdir(exist_ok=True)  # empty: the system's parts stay out
    (root / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    debs = root / "debs"
    debs.mkdir(exist_ok=True)
    uri, signed_by = system_mirror()
    opts = f"[signed-by={signed_by}] " if signed_by else ""
    source_list = root / "sources.list"
    source_list.write_text(f"deb {opts}{uri} bullseye main\n")
    private = [
        "-o", f"Dir::Etc::SourceList={source_list}",
        "-o", f"Dir::Etc::SourceParts={root / 'sources.list.d'}",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
    ]
    _apt(["apt-get", *private, "update"], log)
    for old in debs.glob("*.deb"):
        old.unlink()
    _apt(["apt-get", *private, "download", *packages], log, cwd=debs)
    found = sorted(debs.glob("*.deb"))
    if len(found) != len(packages):
        raise UserError(f"expected {len(packages)} bullseye packages in {debs}, got {[p.name for p in found]}")
    return found
