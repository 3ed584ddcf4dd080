"""`gemma3n-edge install`: device checks and the verified push, against a fake `adb` on PATH.

The fake adb keeps a device's files under a directory, records every call, and simulates
what real phones do wrong: no device, two devices, the wrong ABI, a full disk, a push that
arrives short (the install must notice and push again), a half-pushed bundle left on the
device by an earlier run. The real adb is also run with no device attached (CI has none).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.device import install as inst
from edge.errors import UserError

FAKE_ADB = textwrap.dedent(
    r'''
    #!PYTHON
    """Fake adb: state in $FAKE_ADB_STATE (json), calls appended to $FAKE_ADB_LOG."""
    import hashlib, json, os, shlex, shutil, sys
    from pathlib import Path

    state_path = Path(os.environ["FAKE_ADB_STATE"])
    state = json.loads(state_path.read_text())
    args = sys.argv[1:]
    with open(os.environ["FAKE_ADB_LOG"], "a") as log:
        log.write(json.dumps(args) + "\n")
    serial = None
    if args[:1] == ["-s"]:
        serial, args = args[1], args[2:]
    devices = state["devices"]

    def save():
        state_path.write_text(json.dumps(state))

    if args == ["devices"]:
        print("List of devices attached")
        for s, st in devices.items():
            print(f"{s}\t{st['state']}")
        print()
        sys.exit(0)
    if not devices:
        print("adb: no devices/emulators found", file=sys.stderr); sys.exit(1)
    if serial is None:
        if len(devices) > 1:
            print("adb: more than one device/emulator", file=sys.stderr); sys.exit(1)
        serial = next(iter(devices))
    if serial not in devices:
        print(f"adb: device '{serial}' not found", file=sys.stderr); sys.exit(1)
    dev = devices[serial]
    root = Path(state["root"]) / serial

    def local(p):
        return root / p.lstrip("/")

    cmd = args[0]
    if cmd == "shell":
        words = shlex.split(" ".join(args[1:]))
        w = words[0]
        if w == "getprop":
            print(dev["props"].get(words[1], ""))
        elif w == "cat" and words[1] == "/proc/meminfo":
            print(f"MemTotal:       {dev['mem_total_kb']} kB\nMemFree:  1000 kB\nMemAvailable:   {dev['mem_avail_kb']} kB")
        elif w == "df":
            print("Filesystem     1K-blocks    Used Available Use% Mounted on")
            print(f"/dev/block/dm-5 100000000 5000 {dev['free_kb']} 50% /data")
        elif w == "mkdir":
            local(words[-1]).mkdir(parents=True, exist_ok=True)
        elif w == "stat":
            p = local(words[-1])
            if not p.exists():
                print(f"stat: '{words[-1]}': No such file or directory", file=sys.stderr); sys.exit(1)
            print(p.stat().st_size)
        elif w == "sha256sum":
            p = local(words[-1])
            if not dev.get("has_sha256sum", True):
                print("/system/bin/sh: sha256sum: inaccessible or not found", file=sys.stderr); sys.exit(127)
            if not p.exists():
                print(f"sha256sum: {words[-1]}: No such file or directory", file=sys.stderr); sys.exit(1)
            print(hashlib.sha256(p.read_bytes()).hexdigest() + "  " + words[-1])
        elif w == "rm":
            for name in words[2:]:
                local(name).unlink(missing_ok=True)
        elif w == "mv":
            local(words[-2]).replace(local(words[-1]))
        else:
            print(f"fake adb: unknown shell command {words}", file=sys.stderr); sys.exit(2)
    elif cmd == "push":
        src, dst = Path(args[1]), local(args[2])
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes()
        if dev.get("short_pushes", 0) > 0:  # the cable drops mid-transfer, adb says nothing
            dev["short_pushes"] -= 1
            save()
            data = data[: len(data) // 2]
        if dev.get("slow_push"):  # half now, the rest after a pause: progress can be seen
            import time
            dst.write_bytes(data[: len(data) // 2])
            time.sleep(dev["slow_push"])
        dst.write_bytes(data)
        print(f"{src}: 1 file pushed, 0 skipped.")
    elif cmd == "install":
        if dev.get("install_failure"):
            print(f"Failure [{dev['install_failure']}]"); sys.exit(1)
        dev["installed"] = args[-1]
        save()
        print("Success")
    else:
        print(f"fake adb: unknown command {args}", file=sys.stderr); sys.exit(2)
    '''
).lstrip()

PIXEL = {
    "state": "device",
    "props": {
        "ro.product.cpu.abilist": "arm64-v8a,armeabi-v7a,armeabi",
        "ro.build.version.sdk": "34",
        "ro.build.version.release": "14",
        "ro.product.model": "Pixel 8",
    },
    "mem_total_kb": 8 * 1024 * 1024,
    "mem_avail_kb": 4 * 1024 * 1024,
    "free_kb": 50 * 1024 * 1024,
}


class FakeAdb:
    """Writes the fake adb onto PATH and exposes its state and call log."""

    def __init__(self, tmp: Path, monkeypatch):
        self.bin, self.root = tmp / "bin", tmp / "devices"
        self.bin.mkdir()
        self.state_path, self.log_path = tmp / "adb_state.json", tmp / "adb_calls.jsonl"
        exe = self.bin / "adb"
        exe.write_text(FAKE_ADB.replace("PYTHON", sys.executable, 1))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
        self.log_path.write_text("")
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_ADB_STATE", str(self.state_path))
        monkeypatch.setenv("FAKE_ADB_LOG", str(self.log_path))
        self.set(devices={})

    def set(self, **devices_or_state):
        state = {"root": str(self.root), "devices": {}}
        state.update(devices_or_state)
        self.state_path.write_text(json.dumps(state))

    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def device_file(self, serial: str, remote: str) -> Path:
        return self.root / serial / remote.lstrip("/")


@pytest.fixture
def adb(tmp_path, monkeypatch):
    return FakeAdb(tmp_path, monkeypatch)


@pytest.fixture
def bundle(tmp_path) -> Path:
    d = tmp_path / "artifacts"
    d.mkdir()
    # Only the magic matters to `install`; the pseudo-random tail makes sha256 meaningful.
    (d / inst.BUNDLE).write_bytes(b"LITERTLM" + os.urandom(300_000))
    return d


@pytest.fixture
def apk(tmp_path) -> Path:
    p = tmp_path / "demo.apk"
    p.write_bytes(b"PK\x03\x04 not a real apk: the fake adb only records it")
    return p


def remote_bundle(serial: str) -> str:
    return f"{inst.DEVICE_DIR}/{inst.BUNDLE}"


def run_install(bundle, apk, serial=None, **kw):
    lines: list[str] = []
    result = inst.install(bundle, serial=serial, apk=apk, log=lines.append, **kw)
    return result, "\n".join(lines)


def test_happy_path_installs_pushes_verifies_and_prints_start(adb, bundle, apk):
    adb.set(devices={"PIX1": dict(PIXEL)})
    result, out = run_install(bundle, apk)
    pushed = adb.device_file("PIX1", remote_bundle("PIX1"))
    assert pushed.read_bytes() == (bundle / inst.BUNDLE).read_bytes()
    assert not adb.device_file("PIX1", remote_bundle("PIX1") + ".partial").exists()
    assert adb.state()["devices"]["PIX1"]["installed"] == str(apk)
    assert result["start"] == "adb -s PIX1 shell am start -n com.gemma3nedge.demo/.MainActivity"
    assert result["start"] in out
    calls = adb.calls()
    kinds = [c[2] if c[:1] == ["-s"] else c[0] for c in calls]
    assert kinds.index("install") < kinds.index("push"), "the APK goes first so the app owns its files dir"
    push = next(c for c in calls if "push" in c)
    assert push[-1].endswith(".partial"), "push to a temporary name, then rename"
    # A second run finds the verified bundle and does not push again.
    _, out2 = run_install(bundle, apk)
    assert "already on the device" in out2
    assert sum("push" in c for c in adb.calls()) == 1


def test_push_shows_progress(adb, bundle, apk, capsys):
    adb.set(devices={"PIX1": dict(PIXEL, slow_push=1.6)})
    run_install(bundle, apk)
    assert "50.0%" in capsys.readouterr().out  # polled while the fake push paused at half


def test_no_device(adb, bundle, apk):
    adb.set(devices={})
    with pytest.raises(UserError, match="no Android device found.*USB debugging"):
        run_install(bundle, apk)


def test_two_devices_need_serial_then_serial_picks_one(adb, bundle, apk):
    adb.set(devices={"AAA": dict(PIXEL), "BBB": dict(PIXEL)})
    with pytest.raises(UserError, match=r"2 devices are attached \(AAA \(device\), BBB \(device\)\).*--serial"):
        run_install(bundle, apk)
    result, _ = run_install(bundle, apk, serial="BBB")
    assert result["serial"] == "BBB"
    assert adb.device_file("BBB", remote_bundle("BBB")).exists()
    assert not adb.device_file("AAA", remote_bundle("AAA")).exists()
    assert all(c[:2] == ["-s", "BBB"] for c in adb.calls() if c != ["devices"])
    with pytest.raises(UserError, match="no device with serial 'CCC'; attached: AAA"):
        run_install(bundle, apk, serial="CCC")


def test_unauthorized_device(adb, bundle, apk):
    adb.set(devices={"U1": dict(PIXEL, state="unauthorized")})
    with pytest.raises(UserError, match="accept the USB debugging prompt"):
        run_install(bundle, apk)


def test_wrong_abi(adb, bundle, apk):
    x86 = dict(PIXEL, props=dict(PIXEL["props"], **{"ro.product.cpu.abilist": "x86_64,x86"}))
    adb.set(devices={"EMU": x86})
    with pytest.raises(UserError, match="is x86_64/x86: the demo ships only arm64-v8a"):
        run_install(bundle, apk)
    assert not any("install" in c or "push" in c for c in adb.calls())


def test_old_android(adb, bundle, apk):
    old = dict(PIXEL, props=dict(PIXEL["props"], **{"ro.build.version.sdk": "23", "ro.build.version.release": "6.0"}))
    adb.set(devices={"OLD": old})
    with pytest.raises(UserError, match=r"Android 6.0 \(API 23\): the app needs Android 7.0 \(API 24\)"):
        run_install(bundle, apk)


def test_full_storage(adb, bundle, apk):
    adb.set(devices={"FULL": dict(PIXEL, free_kb=1024)})  # 1 MiB free < bundle + APK + margin
    with pytest.raises(UserError, match="needs .* free some space on the phone"):
        run_install(bundle, apk)
    assert not any("push" in c for c in adb.calls())


def test_ram_too_small_unless_forced(adb, bundle, apk, monkeypatch):
    # Pretend the bundle is 8 GiB (an E4B fp16 bundle) on a 4 GiB phone: 0.6*8+0.5 GiB > 4 GiB.
    monkeypatch.setattr(inst, "ram_need", lambda n: 5 << 30)
    adb.set(devices={"SMALL": dict(PIXEL, mem_total_kb=4 * 1024 * 1024)})
    with pytest.raises(UserError, match="RAM; this bundle needs about 5.00 GiB.*--force"):
        run_install(bundle, apk)
    _, out = run_install(bundle, apk, force=True)
    assert "warning:" in out and adb.device_file("SMALL", remote_bundle("SMALL")).exists()


def test_ram_need_estimate_scales_with_bundle():
    gib = 1 << 30
    assert inst.ram_need(3 * gib) == int(0.6 * 3 * gib) + (512 << 20)
    assert inst.ram_need(6 * gib) > inst.ram_need(3 * gib)


def test_interrupted_push_is_detected_and_redone(adb, bundle, apk):
    adb.set(devices={"PIX1": dict(PIXEL, short_pushes=1)})
    _, out = run_install(bundle, apk)
    size = (bundle / inst.BUNDLE).stat().st_size
    assert f"push 1 arrived incomplete ({size // 2} of {size} bytes): pushing again" in out
    assert sum("push" in c for c in adb.calls()) == 2
    assert adb.device_file("PIX1", remote_bundle("PIX1")).read_bytes() == (bundle / inst.BUNDLE).read_bytes()


def test_push_failing_every_time_is_an_error_and_leaves_nothing_usable(adb, bundle, apk):
    adb.set(devices={"PIX1": dict(PIXEL, short_pushes=5)})
    with pytest.raises(UserError, match="failed 2 times .*a partial copy is never used"):
        run_install(bundle, apk)
    assert not adb.device_file("PIX1", remote_bundle("PIX1")).exists()
    assert not adb.device_file("PIX1", remote_bundle("PIX1") + ".partial").exists()


def test_half_pushed_bundle_on_device_is_replaced(adb, bundle, apk):
    adb.set(devices={"PIX1": dict(PIXEL)})
    stale = adb.device_file("PIX1", remote_bundle("PIX1"))
    stale.parent.mkdir(parents=True)
    data = (bundle / inst.BUNDLE).read_bytes()
    stale.write_bytes(data[:1000])  # an earlier run died mid-push straight to the final name
    _, out = run_install(bundle, apk)
    assert f"incomplete or stale (1000 of {len(data)} bytes)" in out
    assert stale.read_bytes() == data
    # Same size, different content: caught by sha256.
    stale.write_bytes(b"LITERTLM" + bytes(len(data) - 8))
    _, out = run_install(bundle, apk)
    assert "same size but a different sha256" in out and stale.read_bytes() == data


def test_device_without_sha256sum_falls_back_to_size(adb, bundle, apk):
    adb.set(devices={"OLDTOY": dict(PIXEL, has_sha256sum=False)})
    _, out = run_install(bundle, apk)
    assert "size matches (the device has no sha256sum" in out


def test_apk_refused_by_phone(adb, bundle, apk):
    adb.set(devices={"PIX1": dict(PIXEL, install_failure="INSTALL_FAILED_UPDATE_INCOMPATIBLE: signatures differ")})
    with pytest.raises(UserError, match="another signing key.*adb -s PIX1 uninstall com.gemma3nedge.demo"):
        run_install(bundle, apk)


def test_bad_bundle_dir(tmp_path, apk):
    with pytest.raises(UserError, match="no model.litertlm in .*gemma3n-edge build"):
        inst.install(tmp_path, apk=apk, log=lambda s: None)
    fake = tmp_path / "model.litertlm"
    fake.write_bytes(b"TFL3 not a bundle")
    with pytest.raises(UserError, match="LITERTLM magic"):
        inst.install(tmp_path, apk=apk, log=lambda s: None)


def test_cli_reports_clear_error(adb, bundle, apk):
    """Through the CLI: exit 1 and one readable line, no traceback."""
    adb.set(devices={})
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "install", str(bundle), "--apk", str(apk)],
                          capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: no Android device found") and "Traceback" not in proc.stderr


def test_cli_json_is_the_result_alone_on_stdout(adb, bundle, apk):
    adb.set(devices={"PIX1": dict(PIXEL)})
    proc = subprocess.run([sys.executable, "-m", "edge.cli", "install", str(bundle), "--apk", str(apk), "--json"],
                          capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["serial"] == "PIX1" and result["start"].startswith("adb -s PIX1 shell am start")
    assert "device PIX1" in proc.stderr  # the messages moved to stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_adb_without_device(bundle, apk, monkeypatch):
    """Debian's adb 29 with nothing attached: a clear error, nothing pushed."""
    from edge.device import toolchain

    exe = toolchain.ensure_adb(log=print, assume_yes=True)  # installs Debian's adb when missing (root, as on CI)
    port = str(_free_port())  # a private server, so no other adb user here is disturbed
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    try:
        assert inst.list_devices(inst.Adb(exe)) == []
        with pytest.raises(UserError, match="no Android device found"):
            inst.install(bundle, apk=apk, log=lambda s: None)
        # And the raw adb error for a command aimed at no device reads as ours.
        with pytest.raises(UserError, match="no Android device is connected"):
            inst.Adb(exe).run("shell", "true", timeout=60)
    finally:
        subprocess.run([exe, "-P", port, "kill-server"], capture_output=True, timeout=30)


def test_missing_adb_is_not_installed_without_asking(monkeypatch):
    """As root with no adb: the user is asked; a no (or no terminal) prints the command, runs nothing."""
    from edge.device import toolchain

    ran = []
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)
    monkeypatch.setattr(toolchain.os, "geteuid", lambda: 0)
    monkeypatch.setattr(toolchain, "_apt", lambda cmd, log: ran.append(cmd))
    with pytest.raises(UserError, match="apt-get install --no-install-recommends adb"):
        toolchain.ensure_adb(ask=lambda q: "n")
    with pytest.raises(UserError, match="--yes"):
        toolchain.ensure_adb(ask=lambda q: "")
    assert ran == []
