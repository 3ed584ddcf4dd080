"""tools/profile_decode.py: perf's report parsed and grouped by kernel family; a smoke run on the tiny bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import profile_decode  # noqa: E402

REPORT = """\
# Samples: 1K of event 'cpu-clock:ppp'
#
# Overhead  Shared Object          Symbol
# ........  .....................  ..............................
#
    61.20%  liblitert-lm.so        [.] xnn_qd8_f32_qc4w_gemm_minmax_ukernel_1x16c8__avx512vnni
    12.50%  liblitert-lm.so        [.] xnn_f32_gemm_minmax_ukernel_1x16__avx512f_broadcast
     9.00%  libc.so.6              [.] __memmove_avx512_unaligned_erms
     5.00%  liblitert-lm.so        [.] xnn_f32_qd8_convert_ukernel__avx512skx_u128
     4.00%  [kernel.kallsyms]      [k] clear_page_erms
     3.00%  liblitert-lm.so        [.] xnn_f32_raddstoreexpminusmax_ukernel__avx512f_rr1_p5_scalef_u64_acc2
     2.30%  liblitert-lm.so        [.] xnn_f32_vtanh_ukernel__avx512skx_expm1minus_rr1_p6h5ts_nr1_u64
     3.00%  liblitert-lm.so        [.] 0x00000000012345
"""


def test_report_rows_are_grouped_by_kernel_family():
    rows = profile_decode.parse_report(REPORT)
    assert len(rows) == 8 and rows[0]["share"] == pytest.approx(0.612)
    s = profile_decode.summarize(rows, step_s=0.1)
    fam = s["families"]
    assert fam["int4/int8 matmul"] == {"share": pytest.approx(0.612), "ms_per_step": pytest.approx(61.2)}
    assert fam["fp32 matmul"]["share"] == pytest.approx(0.125)
    assert fam["copy / pack"]["share"] == pytest.approx(0.09)
    assert fam["activation quantization"]["share"] == pytest.approx(0.05)
    assert fam["kernel (page faults, scheduling)"]["share"] == pytest.approx(0.04)
    assert fam["exp (softmax, gelu, tanh)"]["share"] == pytest.approx(0.053)
    assert fam["other"]["share"] == pytest.approx(0.03)  # the bare address, not classified here
    assert sum(v["share"] for v in fam.values()) == pytest.approx(1.0)
    assert list(fam)[0] == "int4/int8 matmul"  # largest first


@pytest.mark.parametrize("code, family", [
    (["vmovdqa64", "tileloadd", "tdpbssd", "add"], "int4/int8 matmul"),  # AMX int8 tiles
    (["vpandq", "vgf2p8affineqb", "vpdpbusd"], "int4/int8 matmul"),  # int4 unpack + VNNI
    (["vmovups", "vmovntps", "sub", "jne"], "copy / pack"),  # a large memcpy
    (["prefetchw", "vmovaps", "sub", "jb"], "fill"),
    (["vbroadcastss", "vfmadd231ps", "vmovaps"], "fp32 matmul"),
    (["vfmadd231ps", "vmulps"], "fp32 elementwise / reduce"),
    (["vmaskmovps", "vunpcklps", "add"], "transpose"),
    (["vmovups", "mov", "vmovups", "sarl", "vmovups", "jne"], "copy / pack"),
    (["prefetcht0", "vinsertf128", "vmovups", "lea", "vinsertf32x4"], "copy / pack"),  # weight packing
    (["vmovups", "mov", "add", "jne"], "other"),  # one vector move is no copy loop
    (["call", "ret", "push"], "other"),
    ([], "other"),
])
def test_bare_addresses_are_named_by_their_instructions(code, family):
    assert profile_decode.family_of_code(code) == family


def test_an_empty_report_is_an_error_not_an_empty_profile():
    with pytest.raises(ValueError, match="no sample rows"):
        profile_decode.parse_report("# Samples: 0\n#\n")


@pytest.mark.skipif(shutil.which("perf") is None, reason="perf (Debian linux-perf) is not installed")
def test_profile_decode_smoke(tiny_bundle, tmp_path):
    """The real tool on the tiny fp32 bundle: the engine decodes and perf's samples are grouped."""
    out = tmp_path / "p.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tools/profile_decode.py"), str(tiny_bundle), "--prefill", "8",
                           "--decode-tokens", "48", "--context", "96", "--freq", "2999", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["engine"]["decode_tok_s"] > 0 and r["decode_step_s"] > 0
    assert r["families"] and r["top_symbols"] and r["machine"]["cores"]
    assert sum(v["share"] for v in r["families"].values()) == pytest.approx(1.0, abs=0.02)
