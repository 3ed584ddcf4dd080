"""Put the demo app and a `.litertlm` bundle on a phone with adb, checking everything first.

Order: adb present → one device (or --serial) that is authorized → arm64-v8a → Android version
≥ the app's minSdk → free storage for bundle + APK → RAM against the model's estimated need →
install the APK (first, so the app owns its external files directory) → push the bundle to
that directory (where the app looks for it) through a temporary name, verify size + sha256 on
the device, then rename. A bundle already on the device is reused only if it verifies; a
half-pushed one (an earlier interrupted push) is detected and pushed again, never used.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge.device import apk as apk_lib
from edge.device import toolchain
from edge.errors import UserError
from edge.fileio import sha256_file

BUNDLE = "model.litertlm"
DEVICE_DIR = f"/sdcard/Android/data/{apk_lib.PACKAGE}/files"  # = getExternalFilesDir(null)
STORAGE_MARGIN = 256 << 20  # room left for the OS and the app's cache after the push
# RAM estimate: decode touches every decoder weight, so most of the mapped bundle must stay
# resident; the PLE table and the encoders (~40% of a Gemma 3n bundle) are paged in on demand.
# Plus ~512 MiB for KV cache, activations and the runtime at a 4k context.
RESIDENT_FRACTION = 0.6
WORKING_SET = 512 << 20
PUSH_ATTEMPTS = 2


@dataclass(frozen=True)
class Device:
    # In the order the install log names them.
    serial: str
    model: str
    release: str
    sdk: int
    abis: tuple[str, ...]
    mem_total: int  # bytes
    mem_available: int  # bytes
    storage_free: int  # bytes free on /data (holds the APK and /sdcard)


def ram_need(bundle_bytes: int) -> int:
    return int(bundle_bytes * RESIDENT_FRACTION) + WORKING_SET


class Adb:
    """adb for one device; every failure becomes a UserError that says what to do."""

    def __init__(self, exe: str, serial: str | None = None):
        self.exe, self.serial = exe, serial

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [self.exe, *(["-s", self.serial] if self.serial else []), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise UserError(f"`{' '.join(cmd)}` did not answer in {timeout:.0f} s: is the phone still connected?") from e
        if check and proc.returncode != 0:
            raise UserError(_explain(cmd, proc.stdout + proc.stderr, self.serial))
        return proc

    def shell(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("shell", command, check=check)

    def prop(self, name: str) -> str:
        return self.shell(f"getprop {name}").stdout.strip()


def _explain(cmd: list[str], output: str, serial: str | None) -> str:
    out = output.strip()
    if "no devices/emulators found" in out:
        return "no Android device is connected (adb sees none): plug the phone in and enable USB debugging"
    if "unauthorized" in out:
        return f"device {serial} has not authorized this computer: unlock it and accept the USB debugging prompt"
    if "offline" in out:
        return f"device {serial} is offline: unplug and replug it, or run `adb kill-server`"
    if re.search(r"device '.*' not found", out):
        return f"device {serial} disappeared (adb: {out.splitlines()[-1]}): reconnect it and retry"
    return f"`{' '.join(cmd)}` failed: {out.splitlines()[-1] if out else 'no output'}"


# ---------------------------------------------------------------- device discovery and checks


def list_devices(adb: Adb) -> list[tuple[str, str]]:
    """[(serial, state)] from `adb devices` (state: device, unauthorized, offline, …)."""
    out = adb.run("devices").stdout
    rows = []
    for line in out.splitlines():
        if not line.strip() or line.startswith(("List of devices", "*")):
            continue
        parts = line.split()
        if len(parts) >= 2:
            rows.append((parts[0], parts[1]))
    return rows


def choose_device(devices: list[tuple[str, str]], serial: str | None) -> str:
    if not devices:
        raise UserError(
            "no Android device found: connect a phone by USB, enable Developer options → USB debugging, "
            "accept the prompt on the phone, then check that `adb devices` lists it"
        )
    listing = ", ".join(f"{s} ({st})" for s, st in devices)
    if serial is None:
        if len(devices) > 1:
            raise UserError(f"{len(devices)} devices are attached ({listing}): choose one with --serial SERIAL")
        serial = devices[0][0]
    states = dict(devices)
    if serial not in states:
        raise UserError(f"no device with serial {serial!r}; attached: {listing}")
    state = states[serial]
    if state == "unauthorized":
        raise UserError(f"device {serial} has not authorized this computer: unlock it and accept the USB debugging prompt")
    if state != "device":
        raise UserError(f"device {serial} is {state}: unplug and replug it (or `adb kill-server`), then retry")
    return serial


def probe(adb: Adb) -> Device:
    abis = tuple(a for a in adb.prop("ro.product.cpu.abilist").split(",") if a)
    sdk_text = adb.prop("ro.build.version.sdk")
    if not sdk_text.isdigit():
        raise UserError(f"device {adb.serial} reported no Android API level (getprop gave {sdk_text!r})")
    meminfo = adb.shell("cat /proc/meminfo").stdout
    mem = {k: int(v) * 1024 for k, v in re.findall(r"^(\w+):\s+(\d+) kB", meminfo, re.M)}
    return Device(
        serial=adb.serial,
        abis=abis or (adb.prop("ro.product.cpu.abi"),),
        sdk=int(sdk_text),
        release=adb.prop("ro.build.version.release"),
        model=adb.prop("ro.product.model"),
        mem_total=mem.get("MemTotal", 0),
        mem_available=mem.get("MemAvailable", mem.get("MemFree", 0)),
        storage_free=_free_bytes(adb),
    )


def _free_bytes(adb: Adb) -> int:
    out = adb.shell("df -k /data").stdout.strip().splitlines()
    fields = out[-1].split() if out else []
    # toybox: Filesystem 1K-blocks Used Available Use% Mounted-on -> Available is 3rd from the end.
    if len(fields) < 4 or not fields[-3].isdigit():
        raise UserError(f"cannot read free storage on {adb.serial} from `df -k /data`: {out[-1:] or 'no output'}")
    return int(fields[-3]) * 1024


def check_compat(dev: Device) -> None:
    """The app cannot run at all: wrong ABI or too old an Android."""
    if apk_lib.ABI not in dev.abis:
        raise UserError(
            f"{dev.model} ({dev.serial}) is {'/'.join(dev.abis) or 'of unknown ABI'}: the demo ships only "
            f"{apk_lib.ABI} (Google's LiteRT-LM Android runtime is 64-bit ARM only)"
        )
    if dev.sdk < apk_lib.MIN_SDK:
        raise UserError(
            f"{dev.model} runs Android {dev.release} (API {dev.sdk}): the app needs Android 7.0 "
            f"(API {apk_lib.MIN_SDK}) or newer"
        )


def check_resources(dev: Device, bundle_bytes: int, apk_bytes: int, reclaimable: int, force: bool, log) -> None:
    """The bundle does not fit: storage (hard), RAM (estimate: error unless forced)."""
    need = bundle_bytes + apk_bytes + STORAGE_MARGIN
    have = dev.storage_free + reclaimable
    if have < need:
        raise UserError(
            f"{dev.model} has {_gb(dev.storage_free)} free (+{_gb(reclaimable)} from the old bundle) but needs "
            f"{_gb(need)} (bundle {_gb(bundle_bytes)} + APK {_gb(apk_bytes)} + {_gb(STORAGE_MARGIN)} margin): "
            "free some space on the phone"
        )
    need_ram = ram_need(bundle_bytes)
    if dev.mem_total and dev.mem_total < need_ram:
        msg = (f"{dev.model} has {_gb(dev.mem_total)} of RAM; this bundle needs about {_gb(need_ram)} "
               "(estimate from its size): use a smaller slice (e.g. E2B) or a lower-bit recipe")
        if not force:
            raise UserError(msg + ", or pass --force to install anyway")
        log(f"warning: {msg}")
    elif dev.mem_available and dev.mem_available < need_ram:
        log(f"note: only {_gb(dev.mem_available)} of RAM is free now (the model needs about {_gb(need_ram)}): "
            "close other apps before loading it")


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


# ---------------------------------------------------------------- push with verification


def remote_size(adb: Adb, path: str) -> int | None:
    proc = adb.shell(f"stat -c %s {shlex.quote(path)}", check=False)
    text = proc.stdout.strip()
    return int(text) if proc.returncode == 0 and text.isdigit() else None


def remote_sha256(adb: Adb, path: str) -> str | None:
    """sha256 on the device (toybox sha256sum); None when the device has no sha256sum."""
    proc = adb.shell(f"sha256sum {shlex.quote(path)}", check=False)
    m = re.match(r"([0-9a-f]{64})\s", proc.stdout)
    return m.group(1) if proc.returncode == 0 and m else None


def verify_remote(adb: Adb, path: str, size: int, digest: str) -> tuple[bool, str]:
    """(ok, why) comparing a device file with the local bundle by size, then sha256."""
    got = remote_size(adb, path)
    if got is None:
        return False, "missing"
    if got != size:
        return False, f"{got} of {size} bytes"
    remote = remote_sha256(adb, path)
    if remote is None:
        return True, "size matches (the device has no sha256sum to check the content)"
    if remote != digest:
        return False, "same size but a different sha256"
    return True, "size and sha256 match"


def push_bundle(adb: Adb, local: Path, digest: str, log) -> str:
    """Push `local` to DEVICE_DIR/model.litertlm unless a verified copy is there; returns the path."""
    final, partial = f"{DEVICE_DIR}/{BUNDLE}", f"{DEVICE_DIR}/{BUNDLE}.partial"
    size = local.stat().st_size
    adb.shell(f"mkdir -p {shlex.quote(DEVICE_DIR)}")
    ok, why = verify_remote(adb, final, size, digest)
    if ok:
        log(f"bundle already on the device ({why}): not pushing again")
        return final
    if why != "missing":
        log(f"the bundle on the device is incomplete or stale ({why}): removing it and pushing again")
    adb.shell(f"rm -f {shlex.quote(final)} {shlex.quote(partial)}")
    for attempt in range(1, PUSH_ATTEMPTS + 1):
        _push_with_progress(adb, local, partial, size, log)
        ok, why = verify_remote(adb, partial, size, digest)
        if ok:
            adb.shell(f"mv -f {shlex.quote(partial)} {shlex.quote(final)}")
            log(f"bundle pushed and verified ({why}): {final}")
            return final
        adb.shell(f"rm -f {shlex.quote(partial)}")
        if attempt < PUSH_ATTEMPTS:
            log(f"push {attempt} arrived incomplete ({why}): pushing again")
    raise UserError(
        f"pushing {local.name} failed {PUSH_ATTEMPTS} times (last: {why}): check the USB cable and the "
        "phone's free space, then run install again (a partial copy is never used)"
    )


def _push_with_progress(adb: Adb, local: Path, remote: str, size: int, log) -> None:
    cmd = [adb.exe, *(["-s", adb.serial] if adb.serial else []), "push", str(local), remote]
    log(f"pushing {local.name} ({_gb(size)}) to {remote}")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    started, last = time.monotonic(), -1
    while True:
        try:
            proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            done = remote_size(adb, remote)
        if done is not None and done != last:
            last = done
            rate = done / max(time.monotonic() - started, 1e-3) / 2**20
            _progress(f"  {100 * done / max(size, 1):5.1f}%  {_gb(done)} of {_gb(size)}  {rate:.1f} MiB/s")
    reader.join(timeout=5)
    _progress(None)
    if proc.returncode != 0:
        tail = "".join(output).strip().splitlines()
        # Not fatal here: the caller verifies what arrived and pushes again.
        log(f"adb push exited {proc.returncode}: {tail[-1] if tail else 'no output'}")


def _progress(line: str | None) -> None:
    if sys.stdout.isatty():
        print("\r" + (line or "").ljust(60), end="" if line else "\n", flush=True)
    elif line:
        print(line, flush=True)


# ---------------------------------------------------------------- the whole job


def find_bundle(path: Path) -> Path:
    path = Path(path)
    bundle = path / BUNDLE if path.is_dir() else path
    if not bundle.is_file():
        raise UserError(
            f"no {BUNDLE} in {path}: build one with `gemma3n-edge build CKPT --out {path}` "
            "(or pass the .litertlm file itself)"
        )
    if bundle.suffix != ".litertlm":
        raise UserError(f"{bundle} is not a .litertlm bundle (the app's runtime loads .litertlm only)")
    with open(bundle, "rb") as f:
        if f.read(8) != b"LITERTLM":
            raise UserError(f"{bundle} does not start with the LITERTLM magic: not a LiteRT-LM bundle")
    return bundle


def install_apk(adb: Adb, apk: Path, log) -> None:
    log(f"installing {apk.name}")
    proc = adb.run("install", "-r", str(apk), check=False, timeout=600)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 0 and "Failure" not in out:
        return
    hints = {
        "INSTALL_FAILED_UPDATE_INCOMPATIBLE": f"an app with the same name but another signing key is installed: "
        f"`adb -s {adb.serial} uninstall {apk_lib.PACKAGE}` (this deletes its pushed bundle too), then retry",
        "INSTALL_FAILED_INSUFFICIENT_STORAGE": "the phone is out of storage: free some space",
        "INSTALL_FAILED_NO_MATCHING_ABIS": f"the phone does not run {apk_lib.ABI} code",
        "INSTALL_FAILED_OLDER_SDK": f"the phone's Android is older than API {apk_lib.MIN_SDK}",
        "INSTALL_FAILED_USER_RESTRICTED": "installing over USB is blocked: allow it in Developer options",
    }
    for code, hint in hints.items():
        if code in out:
            raise UserError(f"the phone refused the APK ({code}): {hint}")
    raise UserError(_explain([adb.exe, "install", "-r", str(apk)], out, adb.serial))


def install(directory: Path, serial: str | None = None, apk: Path | None = None, force: bool = False,
            log=print, assume_yes: bool = False) -> dict:
    """Check the phone, install the APK, push the bundle; returns what was done."""
    bundle = find_bundle(directory)
    adb = Adb(toolchain.ensure_adb(log, assume_yes=assume_yes))
    serial = choose_device(list_devices(adb), serial)
    adb = Adb(adb.exe, serial)
    dev = probe(adb)
    log(f"device {serial}: {dev.model}, Android {dev.release} (API {dev.sdk}), {'/'.join(dev.abis)}, "
        f"RAM {_gb(dev.mem_total)}, {_gb(dev.storage_free)} free")
    check_compat(dev)
    size = bundle.stat().st_size
    old = remote_size(adb, f"{DEVICE_DIR}/{BUNDLE}") or 0
    apk_path = apk_lib.cached_or_build(apk, log=log)
    check_resources(dev, size, apk_path.stat().st_size, old, force, log)
    log(f"hashing {bundle.name} ({_gb(size)})")
    digest = sha256_file(bundle)
    install_apk(adb, apk_path, log)
    remote = push_bundle(adb, bundle, digest, log)
    start = f"adb -s {serial} shell am start -n {apk_lib.ACTIVITY}"
    log(f"done. Start the app from the launcher (\"Gemma 3n Edge\"), or: {start}")
    return {"serial": serial, "bundle": remote, "sha256": digest, "apk": str(apk_path), "start": start}
