"""Build the demo APK without Gradle or the NDK (pipeline checked in ANDROID.md, ~20 s).

aapt (manifest + res → R.java, unsigned.apk) → javac -source/-target 8 against API 23's
android.jar → dx → aapt add classes.dex and lib/arm64-v8a/*.so → zipalign -p 4 → apksigner
(debug key made on first use, kept in a user cache dir) → apksigner verify + zipalign -c.

Native code: Google's `liblitert-lm.so` from the pinned `litert-lm-api` android_23_arm64_v8a
wheel (same version as the desktop runtime), and our JNI shim (android_demo/jni) cross-compiled
with clang-14 freestanding against Debian's jni.h; the few libc/libdl symbols it uses are
linked against generated stub libraries (the device's real ones resolve them at load time).
Every .so is checked to be aarch64 with 16 KB-aligned LOAD segments before it is packed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edge.device import toolchain as tc
from edge.errors import UserError
from edge.fileio import cache_root, sha256_file

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "android_demo"
BUILD = REPO / "build" / "android"
DEFAULT_APK = BUILD / "gemma3n-edge-demo.apk"
PACKAGE = "com.gemma3nedge.demo"
ACTIVITY = f"{PACKAGE}/.MainActivity"
MIN_SDK = 24  # must match android_demo/AndroidManifest.xml (a test checks aapt's badging)
ABI = "arm64-v8a"
SHIM = "liblitertlm_jni.so"
RUNTIME = "liblitert-lm.so"
PAGE_16K = 16384  # Android 15+ devices may use 16 KB pages: every LOAD segment must allow it
EM_AARCH64 = 183
# Debug signing, as Android's own debug keystore (no secret: a debug APK is not for a store).
KEY_ALIAS, KEY_PASS = "androiddebugkey", "android"


@dataclass(frozen=True)
class ApkResult:
    path: Path
    bytes: int
    sha256: str
    fingerprint: str  # hash of the inputs; `install` rebuilds when it changes
    seconds: float


def runtime_version() -> str:
    """The litert-lm-api version the desktop runs: the phone gets the same one."""
    try:
        return metadata.version("litert-lm-api")
    except metadata.PackageNotFoundError as e:
        raise UserError("litert-lm-api is not installed in this environment; run `make venv`") from e


def user_cache_dir() -> Path:
    return cache_root() / "android"


def fingerprint() -> str:
    """Hash of everything that goes into the APK (sources, this pipeline, runtime version)."""
    h = hashlib.sha256(runtime_version().encode())
    files = sorted(p for p in DEMO.rglob("*") if p.is_file() and "build" not in p.relative_to(DEMO).parts)
    for p in [*files, Path(__file__), Path(tc.__file__)]:
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def _run(cmd: list, cwd: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise UserError(f"`{' '.join(map(str, cmd))}` failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------- native libraries


def fetch_runtime(cache: Path, log=print) -> Path:
    """liblitert-lm.so for arm64 from the pinned wheel (downloaded once into `cache`)."""
    version = runtime_version()
    wheel_dir = cache / "wheels"
    pattern = f"litert_lm_api-{version}-*android_23_arm64_v8a.whl"
    wheels = sorted(wheel_dir.glob(pattern))
    if not wheels:
        log(f"downloading the Android runtime: litert-lm-api=={version} (android_23_arm64_v8a wheel)")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--platform", "android_23_arm64_v8a", f"litert-lm-api=={version}", "-d", wheel_dir]
        _run(cmd)
        wheels = sorted(wheel_dir.glob(pattern))
        if not wheels:
            raise UserError(f"pip did not produce {pattern} in {wheel_dir}")
    out = cache / "runtime" / version / RUNTIME
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[-1]) as z:
            data = z.read(f"litert_lm/{RUNTIME}")
        tmp = out.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(out)
    return out


def build_shim_android(tools: tc.Toolchain, work: Path) -> Path:
    """Cross-compile the JNI shim for arm64-v8a, API 24, 16 KB pages, no NDK."""
    stubs = work / "stubs"
    stubs.mkdir(parents=True, exist_ok=True)
    target = [tools.clang, f"--target=aarch64-linux-android{MIN_SDK}", "-fuse-ld=lld", "-nostdlib",
              "-shared", "-fPIC", "-Wl,-z,max-page-size=16384"]
    # Link-time stand-ins for the device's libc.so / libdl.so: same sonames, same symbols.
    for lib, symbols in {"libc.so": ("malloc", "free"), "libdl.so": ("dlopen", "dlsym", "dlerror")}.items():
        src = stubs / f"{lib}.c"
        src.write_text("".join(f"void {s}(void) {{}}\n" for s in symbols))
        _run([*target, "-ffreestanding", f"-Wl,-soname,{lib}", "-o", stubs / lib, src])
    out = work / "lib" / ABI / SHIM
    out.parent.mkdir(parents=True, exist_ok=True)
    _run([*target, "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror", "-ffreestanding",
          "-nostdinc", "-isystem", tools.clang_resource_include, "-I", tools.jni_include,
          "-fno-stack-protector", "-fvisibility=default", f"-Wl,-soname,{SHIM}", "-Wl,-z,defs",
          "-Wl,--build-id=sha1", "-o", out, DEMO / "jni" / "litertlm_jni.c", "-L", stubs, "-lc", "-ldl"])
    return out


def elf_load_segments(path: Path) -> tuple[int, list[dict]]:
    """(e_machine, LOAD program headers) of a 64-bit little-endian ELF file."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise UserError(f"{path} is not a 64-bit little-endian ELF file")
        machine = struct.unpack_from("<H", head, 18)[0]
        phoff = struct.unpack_from("<Q", head, 32)[0]
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    loads = []
    for i in range(phnum):
        p_type, _flags, off, vaddr, _paddr, filesz, memsz, align = struct.unpack_from(
            "<IIQQQQQQ", table, i * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append({"offset": off, "vaddr": vaddr, "filesz": filesz, "memsz": memsz, "align": align})
    return machine, loads


def check_android_so(path: Path) -> None:
    """Refuse a library the phone would not load: not aarch64, or not 16 KB-page compatible."""
    machine, loads = elf_load_segments(path)
    if machine != EM_AARCH64:
        raise UserError(f"{path.name} is not an aarch64 library (e_machine {machine})")
    for seg in loads:
        if seg["align"] % PAGE_16K or seg["offset"] % PAGE_16K != seg["vaddr"] % PAGE_16K:
            raise UserError(f"{path.name}: LOAD segment {seg} is not 16 KB aligned")
    if not loads:
        raise UserError(f"{path.name} has no LOAD segments")


# ---------------------------------------------------------------- Java, dex, packaging


def _compile_java(tools: tc.Toolchain, work: Path) -> Path:
    gen, classes = work / "gen", work / "classes"
    for d in (gen, classes):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    _run([tools.aapt, "package", "-f", "-m", "-0", "arsc", "-J", gen, "-M", DEMO / "AndroidManifest.xml",
          "-S", DEMO / "res", "-I", tools.android_jar, "-F", work / "unsigned.apk"])
    sources = sorted(gen.rglob("*.java")) + sorted((DEMO / "src").rglob("*.java"))
    # dx reads only Java 8 class files and does not desugar: -source/-target 8, no lambdas.
    _run([tools.javac, "-source", "8", "-target", "8", "-bootclasspath", tools.android_jar,
          "-Xlint:-options", "-encoding", "UTF-8", "-d", classes, *sources])
    dex = work / "classes.dex"
    _run([tools.dx, "--dex", f"--output={dex}", classes])
    return dex


def debug_keystore(tools: tc.Toolchain, key_dir: Path, log=print) -> Path:
    """A debug signing key, generated once per user (or per key_dir) and never committed."""
    ks = key_dir / "debug.keystore"
    if ks.exists():
        return ks
    key_dir.mkdir(parents=True, exist_ok=True)
    log(f"generating a debug signing key: {ks}")
    tmp = key_dir / f".debug.keystore.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    _run([tools.keytool, "-genkeypair", "-keystore", tmp, "-storepass", KEY_PASS, "-keypass", KEY_PASS,
          "-alias", KEY_ALIAS, "-dname", "CN=Android Debug,O=Android,C=US", "-keyalg", "RSA",
          "-keysize", "2048", "-validity", "10000", "-storetype", "JKS"])
    tmp.replace(ks)
    return ks


def build(out: Path | None = None, *, cache: Path | None = None, key_dir: Path | None = None,
          log=print) -> ApkResult:
    """Build, align, sign and verify the demo APK; installs the toolchain when missing."""
    t0 = time.monotonic()
    out = Path(out) if out else DEFAULT_APK
    cache = Path(cache) if cache else BUILD
    key_dir = Path(key_dir) if key_dir else user_cache_dir()
    if not (DEMO / "AndroidManifest.xml").exists():
        raise UserError(f"the app sources are missing: {DEMO}/AndroidManifest.xml (run from a checkout)")
    tools = tc.ensure(cache, log)
    runtime = fetch_runtime(cache, log)
    with tempfile.TemporaryDirectory(prefix="apk-", dir=_mkdir(cache)) as tmp:
        work = Path(tmp)
        log("compiling the JNI shim for arm64-v8a")
        shim = build_shim_android(tools, work)
        staged_runtime = work / "lib" / ABI / RUNTIME
        shutil.copyfile(runtime, staged_runtime)
        for so in (shim, staged_runtime):
            check_android_so(so)
        log("compiling Java (source/target 8) and dexing")
        _compile_java(tools, work)  # writes work/classes.dex and work/unsigned.apk
        _run([tools.aapt, "add", "unsigned.apk", "classes.dex", f"lib/{ABI}/{SHIM}", f"lib/{ABI}/{RUNTIME}"],
             cwd=work)
        _run([tools.zipalign, "-f", "-p", "4", work / "unsigned.apk", work / "aligned.apk"])
        ks = debug_keystore(tools, key_dir, log)
        log("signing and verifying")
        _run([tools.apksigner, "sign", "--ks", ks, "--ks-pass", f"pass:{KEY_PASS}", "--key-pass",
              f"pass:{KEY_PASS}", "--ks-key-alias", KEY_ALIAS, "--out", work / "signed.apk", work / "aligned.apk"])
        verify(tools, work / "signed.apk")
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        shutil.copyfile(work / "signed.apk", staged)
        staged.replace(out)
    fp = fingerprint()
    if out.resolve() == DEFAULT_APK.resolve():  # what `install` reuses while the inputs are unchanged
        write_stamp(out, fp)
    result = ApkResult(out, out.stat().st_size, sha256_file(out), fp, round(time.monotonic() - t0, 1))
    log(f"wrote {out} ({result.bytes / 2**20:.1f} MiB, {result.seconds} s)")
    return result


def verify(tools: tc.Toolchain, apk: Path) -> str:
    """apksigner verify + zipalign -c -p 4; returns apksigner's report."""
    report = _run([tools.apksigner, "verify", "--verbose", apk])
    if "Verified using v2 scheme (APK Signature Scheme v2): true" not in report:
        raise UserError(f"{apk}: apksigner did not verify the v2 signature:\n{report}")
    _run([tools.zipalign, "-c", "-p", "4", apk])
    return report


def write_stamp(apk: Path, fp: str) -> None:
    stamp = apk.with_name(apk.name + ".json")
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fp, "runtime": runtime_version()}))
    tmp.replace(stamp)


def cached_or_build(apk: Path | None = None, log=print) -> Path:
    """The APK `install` should push: the given one, or the default one rebuilt if stale."""
    if apk is not None:
        apk = Path(apk)
        if not apk.is_file():
            raise UserError(f"APK not found: {apk} (build one with `gemma3n-edge apk --out {apk}`)")
        return apk
    stamp = DEFAULT_APK.with_name(DEFAULT_APK.name + ".json")
    if DEFAULT_APK.exists() and stamp.exists():
        if json.loads(stamp.read_text()).get("fingerprint") == fingerprint():
            return DEFAULT_APK
    log("building the demo APK (sources changed or no APK yet)")
    return build(DEFAULT_APK, log=log).path


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
