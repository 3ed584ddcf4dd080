"""The Android demo APK, built here without Gradle or the NDK, checked as a phone would see it.

- the build: apksigner verify (v1/v2/v3), zipalign -c -p 4, aapt dump badging (package,
  minSdk 24, targetSdk 34, launcher activity, arm64-v8a), resources.arsc stored;
- native code: every .so is aarch64 with 16 KB-aligned LOAD segments (ELF program headers
  parsed here, independently of edge.device.apk), the shim needs only libc.so/libdl.so,
  exports a JNI function for every `native` method, and every C API entry point it looks up
  exists in the arm64 runtime;
- dex: the app's classes are there (dexdump), as Java 8 / dex 035;
- the JNI chain on the desktop: the same C shim built for x86_64, the app's own LiteRtLm
  class and a small driver in a desktop JVM against the x86_64 liblitert-lm.so.

The first run installs the Debian toolchain (edge.device.toolchain, as root).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edge.device import apk as apk_lib
from edge.device import toolchain
from edge.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "android_demo"


@pytest.fixture(scope="session")
def tools() -> toolchain.Toolchain:
    import os

    try:
        return toolchain.ensure(apk_lib.BUILD, log=print)
    except UserError as e:
        if os.geteuid() != 0:  # CI runs as root and installs; a developer without root is told how
            pytest.skip(str(e))
        raise


@pytest.fixture(scope="session")
def built_apk(tools, tmp_path_factory) -> apk_lib.ApkResult:
    tmp = tmp_path_factory.mktemp("apk")
    # The wheel cache under build/ is shared with `gemma3n-edge apk`; the key is per test run.
    return apk_lib.build(tmp / "demo.apk", cache=apk_lib.BUILD, key_dir=tmp / "keys", log=print)


def _run(cmd) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


# ---------------------------------------------------------------- the APK as a whole


def test_apk_signed_aligned_and_manifest(built_apk, tools):
    report = _run([tools.apksigner, "verify", "--verbose", built_apk.path])
    # minSdk 24 needs v2 (v1 JAR signing is only for Android < 7, so apksigner leaves it off).
    for scheme in ("v2 scheme (APK Signature Scheme v2): true", "v3 scheme (APK Signature Scheme v3): true"):
        assert scheme in report
    _run([tools.zipalign, "-c", "-p", "4", built_apk.path])
    badging = _run([tools.aapt, "dump", "badging", built_apk.path])
    assert "package: name='com.gemma3nedge.demo'" in badging
    assert f"sdkVersion:'{apk_lib.MIN_SDK}'" in badging and "targetSdkVersion:'34'" in badging
    assert "launchable-activity: name='com.gemma3nedge.demo.MainActivity'" in badging
    assert "native-code: 'arm64-v8a'" in badging
    assert "uses-permission: name='android.permission.RECORD_AUDIO'" in badging


def test_apk_layout(built_apk):
    with zipfile.ZipFile(built_apk.path) as z:
        infos = {i.filename: i for i in z.infolist()}
    # Android 11+ refuses an APK whose resources.arsc is compressed.
    assert infos["resources.arsc"].compress_type == zipfile.ZIP_STORED
    assert {"AndroidManifest.xml", "classes.dex", "lib/arm64-v8a/liblitertlm_jni.so",
            "lib/arm64-v8a/liblitert-lm.so"} <= set(infos)
    assert not [n for n in infos if n.startswith("lib/") and not n.startswith("lib/arm64-v8a/")]


def test_install_reuses_the_default_apk_until_its_inputs_change(tmp_path, monkeypatch):
    default = tmp_path / "demo.apk"
    default.write_bytes(b"PK")
    monkeypatch.setattr(apk_lib, "DEFAULT_APK", default)
    rebuilt = []
    monkeypatch.setattr(apk_lib, "build", lambda out, log=print: rebuilt.append(out) or apk_lib.ApkResult(
        out, 2, "", "", 0.0))
    apk_lib.cached_or_build(log=lambda s: None)
    assert rebuilt == [default], "no stamp yet: must build"
    apk_lib.write_stamp(default, apk_lib.fingerprint())
    assert apk_lib.cached_or_build(log=lambda s: None) == default and len(rebuilt) == 1
    monkeypatch.setattr(apk_lib, "fingerprint", lambda: "sources-changed")
    apk_lib.cached_or_build(log=lambda s: None)
    assert len(rebuilt) == 2, "a changed input must rebuild"
    with pytest.raises(UserError, match="APK not found"):
        apk_lib.cached_or_build(tmp_path / "nope.apk")


# ---------------------------------------------------------------- native libraries


def _elf_loads(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """(e_machine, [(p_offset, p_vaddr, p_align)] of PT_LOAD) from an ELF64 LE image."""
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not ELF64 little-endian"
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff = struct.unpack_from("<Q", data, 32)[0]
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    loads = []
    for i in range(phnum):
        base = phoff + i * phentsize
        if struct.unpack_from("<I", data, base)[0] == 1:
            offset, vaddr = struct.unpack_from("<QQ", data, base + 8)
            align = struct.unpack_from("<Q", data, base + 48)[0]
            loads.append((offset, vaddr, align))
    return machine, loads


def _apk_libs(apk: Path, dest: Path) -> dict[str, Path]:
    out = {}
    with zipfile.ZipFile(apk) as z:
        for name in z.namelist():
            if name.endswith(".so"):
                out[Path(name).name] = dest / Path(name).name
                out[Path(name).name].write_bytes(z.read(name))
    return out


@pytest.fixture(scope="session")
def apk_libs(built_apk, tmp_path_factory) -> dict[str, Path]:
    return _apk_libs(built_apk.path, tmp_path_factory.mktemp("libs"))


def test_native_libs_are_aarch64_16k_aligned(apk_libs):
    assert set(apk_libs) == {"liblitertlm_jni.so", "liblitert-lm.so"}
    for name, path in apk_libs.items():
        machine, loads = _elf_loads(path.read_bytes())
        assert machine == 183, f"{name}: e_machine {machine}, not EM_AARCH64"
        assert loads, f"{name}: no LOAD segments"
        for offset, vaddr, align in loads:
            assert align >= 16384 and align % 16384 == 0, f"{name}: LOAD p_align {align:#x} < 16 KB"
            assert offset % 16384 == vaddr % 16384, f"{name}: LOAD offset/vaddr not congruent mod 16 KB"


def test_shim_depends_only_on_system_libs_and_runtime_has_no_soname(apk_libs):
    shim = _run(["readelf", "-d", apk_libs["liblitertlm_jni.so"]])
    needed = set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", shim))
    assert needed == {"libc.so", "libdl.so"}, needed
    assert "Library soname: [liblitertlm_jni.so]" in shim
    # Why the shim dlopens the runtime by full path instead of linking it (ANDROID.md).
    assert "SONAME" not in _run(["readelf", "-d", apk_libs["liblitert-lm.so"]])


def _native_methods() -> set[str]:
    java = (DEMO / "src/com/gemma3nedge/demo/LiteRtLm.java").read_text()
    return set(re.findall(r"static native \S+ (\w+)\(", java))


def test_shim_exports_every_native_method(apk_libs):
    exported = set(re.findall(r" T (\S+)", _run(["nm", "-D", "--defined-only", apk_libs["liblitertlm_jni.so"]])))
    methods = _native_methods()
    assert len(methods) >= 10
    missing = {m for m in methods if f"Java_com_gemma3nedge_demo_LiteRtLm_{m}" not in exported}
    assert not missing, f"native methods without a JNI symbol (UnsatisfiedLinkError on the phone): {missing}"
    assert "JNI_OnLoad" in exported


def test_runtime_exports_every_c_api_function_the_shim_uses(apk_libs):
    source = (DEMO / "jni/litertlm_jni.c").read_text()
    used = set(re.findall(r"^\s*X\([^,]+,\s*(\w+),", source, re.M))
    assert len(used) > 40
    exported = set(re.findall(r" T (\S+)", _run(["nm", "-D", "--defined-only", apk_libs["liblitert-lm.so"]])))
    missing = {f"litert_lm_{u}" for u in used} - exported
    assert not missing, f"the arm64 runtime {apk_lib.runtime_version()} lacks {missing}"


def test_check_android_so_rejects_wrong_arch_and_4k_pages(tools, tmp_path):
    src = tmp_path / "f.c"
    src.write_text("int f(void) { return 1; }\n")
    host = tmp_path / "libhost.so"
    _run(["gcc", "-shared", "-fPIC", "-o", host, src])
    with pytest.raises(UserError, match="not an aarch64 library"):
        apk_lib.check_android_so(host)
    small_pages = tmp_path / "lib4k.so"
    _run([tools.clang, "--target=aarch64-linux-android24", "-fuse-ld=lld", "-nostdlib", "-shared", "-fPIC",
          "-Wl,-z,max-page-size=4096", "-o", small_pages, src])
    with pytest.raises(UserError, match="not 16 KB aligned"):
        apk_lib.check_android_so(small_pages)


# ---------------------------------------------------------------- dex


def test_dex_holds_app_classes(built_apk, tools):
    dump = _run([tools.dexdump, "-f", built_apk.path])
    assert "DEX version '035'" in dump  # dx output: Java 8 bytecode, no desugaring needed
    classes = set(re.findall(r"Class descriptor\s+: 'L([^;]+);'", dump))
    for cls in ("MainActivity", "LiteRtLm", "LiteRtLm$Engine", "LiteRtLm$Conversation",
                "LiteRtLm$StreamListener", "AudioCapture", "R$layout", "R$id"):
        assert f"com/gemma3nedge/demo/{cls}" in classes, f"{cls} missing from classes.dex"
    natives = set(re.findall(r"name\s+: '(native\w+)'", dump))
    assert _native_methods() <= natives


def test_java_sources_use_no_lambdas_or_androidx():
    for src in (DEMO / "src").rglob("*.java"):
        text = src.read_text()
        assert "->" not in text, f"{src.name}: a lambda (dx has no desugaring)"
        assert "androidx." not in text and "kotlin" not in text, f"{src.name}: plain framework only"


# ---------------------------------------------------------------- toolchain


def test_toolchain_ensure_is_idempotent(tools, monkeypatch):
    def no_apt(*a, **k):
        raise AssertionError("ensure() ran apt-get although everything is installed")

    monkeypatch.setattr(toolchain, "_apt", no_apt)
    assert toolchain.ensure(apk_lib.BUILD, log=print) == tools


def test_system_mirror_reads_deb822_and_one_line_sources(tmp_path):
    d = tmp_path / "apt"
    (d / "sources.list.d").mkdir(parents=True)
    (d / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n"
    )
    assert toolchain.system_mirror(d) == ("http://mirror.example/debian",
                                          "/usr/share/keyrings/debian-archive-keyring.gpg")
    (d / "sources.list.d" / "debian.sources").unlink()
    (d / "sources.list").write_text("# comment\ndeb [signed-by=/k.gpg] http://other.example/debian/ bookworm main contrib\n")
    assert toolchain.system_mirror(d) == ("http://other.example/debian", "/k.gpg")
    (d / "sources.list").write_text("")
    with pytest.raises(UserError, match="no Debian mirror found"):
        toolchain.system_mirror(d)


# ---------------------------------------------------------------- the JNI chain in a desktop JVM

@pytest.fixture(scope="session")
def desktop_jni(tools, tmp_path_factory) -> dict:
    """The app's C shim built for x86_64 and the app's LiteRtLm class + the driver compiled."""
    import litert_lm

    runtime = Path(litert_lm.__file__).parent / "liblitert-lm.so"
    out = tmp_path_factory.mktemp("desktop_jni")
    java_home = Path(tools.javac).resolve().parents[1]
    shim = out / "liblitertlm_jni.so"
    _run(["gcc", "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror",
          "-I", java_home / "include", "-I", java_home / "include" / "linux", "-o", shim,
          DEMO / "jni" / "litertlm_jni.c", "-ldl"])
    classes = out / "classes"
    _run([tools.javac, "-source", "8", "-target", "8", "-Xlint:-options", "-d", classes,
          DEMO / "src/com/gemma3nedge/demo/LiteRtLm.java", DEMO / "desktop/JniDriver.java"])
    return {"shim": shim, "classes": classes, "runtime": runtime, "java": java_home / "bin" / "java"}


def run_driver(jni: dict, model: Path, prompt: str, max_tokens: int, expected: list[int] | None = None):
    cmd = [jni["java"], "-cp", jni["classes"], "JniDriver", jni["shim"], jni["runtime"], model, prompt,
           str(max_tokens)] + ([",".join(map(str, expected))] if expected else [])
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    return proc, (json.loads(lines[-1][len("RESULT "):]) if lines else None)


def test_desktop_jni_chain_surfaces_runtime_errors(desktop_jni, tmp_path):
    """Java → JNI → dlopen'ed C API → litert_lm_get_last_error_message → Java exception text."""
    proc, result = run_driver(desktop_jni, tmp_path / "absent.litertlm", "hi", 4)
    assert proc.returncode != 0 and result is None
    assert "cannot load" in proc.stderr and "absent.litertlm" in proc.stderr and "NOT_FOUND" in proc.stderr


def check_jni_generation(jni: dict, bundle: Path, prompt: str, expected: list[int]) -> dict:
    """Greedy tokens through the JNI shim must equal `expected` (compared as text: the same
    runtime detokenizes `expected`, so equal ids give equal text; tokenizing generated text
    back to ids is not always the identity for SentencePiece)."""
    proc, out = run_driver(jni, bundle, prompt, len(expected), expected)
    assert out is not None, f"driver failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    assert out["raw_text"] == out["expected_text"], (
        f"JNI greedy text {out['raw_text']!r} (ids {out['raw_ids']}) != expected {out['expected_text']!r} "
        f"(ids {expected})")
    # The chat path the app uses: streamed through callbacks on a runtime thread, finished cleanly.
    assert out["stream_finished"] and out["stream_error"] in (None, ""), out["stream_error"]
    assert out["stream_chunks"], "no streamed chunk reached Java"
    assert out["benchmark"] and out["benchmark"][3] > 0, f"no decode speed in {out['benchmark']}"
    return out


def test_desktop_jni_greedy_matches_simulator(desktop_jni, request):
    """The integrator's tiny Gemma 3n bundle and the simulator's greedy ids (conftest fixture
    `tiny_bundle_greedy` -> (bundle_path, prompt, expected_token_ids))."""
    try:
        bundle, prompt, expected = request.getfixturevalue("tiny_bundle_greedy")
    except pytest.FixtureLookupError:
        pytest.skip("conftest has no `tiny_bundle_greedy` fixture yet (the .litertlm from our converter)")
    check_jni_generation(desktop_jni, Path(bundle), prompt, list(expected))


@pytest.mark.benchmark
def test_desktop_jni_chain_on_stand_in_bundle(desktop_jni):
    """Until the converter's bundle exists: a tiny Gemma 3n exported by litert-torch's own
    exporter (tools/android_standin_bundle.py, ~3 min, cached under build/android/standin).
    The JNI chain's greedy text must equal the runtime's Python binding's on the same bundle."""
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from android_standin_bundle import build_standin
    finally:
        sys.path.remove(str(REPO / "tools"))
    import litert_lm
    from litert_lm import interfaces

    bundle = build_standin(apk_lib.BUILD / "standin")
    engine = litert_lm.Engine(str(bundle), backend=litert_lm.Backend.CPU())
    for prompt in ("The quick brown fox", "def main():"):
        # The binding's greedy: top-p sampler with k = 1 (what the shim does too).
        session = engine.create_session(apply_prompt_template=False, max_output_tokens=8,
                                        sampler_config=interfaces.SamplerConfig(top_k=1, top_p=1.0,
                                                                                temperature=1.0, seed=0))
        session.run_prefill([prompt])
        reference = session.run_decode().texts[0]
        session.close()
        proc, out = run_driver(desktop_jni, bundle, prompt, 8)
        assert out is not None, proc.stderr[-3000:]
        assert out["raw_text"] == reference and reference, (out["raw_text"], reference)
        assert out["stream_finished"] and out["stream_error"] is None and out["stream_chunks"]
        init_s, ttft_s, prefill_tps, decode_tps, prefill_n, decode_n = out["benchmark"]
        assert init_s > 0 and ttft_s > 0 and prefill_tps > 0 and decode_tps > 0 and decode_n == 8
    engine.close()
