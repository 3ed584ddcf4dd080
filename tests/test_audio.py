"""edge.runtime.audio: decoding, resampling, and log-mel features equal to transformers' Gemma3nAudioFeatureExtractor."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile

from edge.runtime.audio import (
    AUDIO_SEQ_LENGTH,
    MAX_SAMPLES,
    AudioFeatureExtractor,
    audio_soft_tokens,
    encoder_steps,
    load_audio,
    resample,
)
from edge.errors import UserError

SR = 16_000


def _tone(freq, sr, seconds, amp=0.5):
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _signals():
    rng = np.random.default_rng(0)
    t = np.arange(MAX_SAMPLES) / SR
    chirp = 0.4 * np.sin(2 * np.pi * (100 + 2000 * t / 30) * t)  # speech-band sweep
    speechlike = chirp * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)) + 0.01 * rng.standard_normal(len(t))
    return {
        "sine_0.5s": _tone(440, SR, 0.5),
        "noise_20837": (0.3 * rng.standard_normal(20_837)).astype(np.float32),
        "chirp_12345": chirp[:12_345].astype(np.float32),  # not a multiple of the 160 hop, nor of 128
        "speechlike_30s": speechlike.astype(np.float32),
        "float64_5000": rng.standard_normal(5_000),  # HF casts float64 to float32
        "one_frame_513": (0.1 * rng.standard_normal(513)).astype(np.float32),
    }


# ------------------------------------------------------------------ features vs HF

@pytest.fixture(scope="module")
def hf():
    transformers = pytest.importorskip("transformers")
    return transformers.Gemma3nAudioFeatureExtractor


@pytest.mark.parametrize("name", list(_signals()))
@pytest.mark.parametrize("window", [False, True], ids=["longest", "30s_window"])
def test_features_equal_hf(hf, name, window):
    wave = _signals()[name]
    kwargs = {"padding": "max_length", "max_length": MAX_SAMPLES} if window else {}
    ref = hf()(wave, return_tensors="np", **kwargs)
    got = AudioFeatureExtractor()(wave, pad_to_window=window)
    want_f, want_m = ref["input_features"][0], ref["input_features_mask"][0]
    assert got.features.dtype == np.float32 and got.mask.dtype == bool
    assert got.features.shape == want_f.shape and got.mask.shape == want_m.shape
    err = float(np.abs(got.features - want_f).max())
    print(f"{name} window={window}: frames={len(got.mask)} max|Δ|={err:.3g}")
    # Same ops in the same dtypes: bit-equal here; 1e-6 leaves room for a different FFT/BLAS build.
    assert err <= 1e-6
    np.testing.assert_array_equal(got.mask, want_m)


def test_nondefault_settings_equal_hf(hf):
    """Per-bin normalization and the other branches HF has (non-HTK pre-emphasis, none, no overdrive)."""
    rng = np.random.default_rng(1)
    wave = (0.2 * rng.standard_normal(9_001)).astype(np.float32)
    mean, std = rng.normal(-5, 1, 128), rng.uniform(0.5, 3, 128)
    for kw in (
        dict(per_bin_mean=list(mean), per_bin_stddev=list(std)),
        dict(preemphasis_htk_flavor=False, fft_overdrive=False, mel_floor=1e-3),
        dict(preemphasis=0.0, input_scale_factor=2.0, min_frequency=0.0, max_frequency=8000.0, feature_size=64),
    ):
        want = hf(**kw)(wave, return_tensors="np")["input_features"][0]
        got = AudioFeatureExtractor.from_hf(kw)(wave).features
        assert got.shape == want.shape
        assert float(np.abs(got - want).max()) <= 1e-6, kw


def test_defaults_match_recorded_real_e2b_features():
    """Anchor to the real checkpoint, not only to HF's class defaults.

    Statistics of google/gemma-3n-E2B-it's own extractor (AutoFeatureExtractor.from_pretrained) on
    this wave, recorded under transformers 5.17.0 and published in a public test file; rounded to 5
    decimals there, hence atol 2e-4.
    """
    t = np.arange(20_837, dtype=np.float64) / SR
    wave = (0.4 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * (300 + 900 * t) * t)
            + 0.05 * np.sin(2 * np.pi * 3100 * t)).astype(np.float32)
    out = AudioFeatureExtractor()(wave)
    f = out.features
    assert f.shape == (128, 128) and out.num_valid_frames == 128
    stats = (f.mean(), f.std(), f.min(), f.max())
    np.testing.assert_allclose(stats, (-6.13652, 3.74858, -11.51293, 4.18331), atol=2e-4)
    np.testing.assert_allclose(f.reshape(-1)[[0, 777, 4321]], (-2.2887, -2.72516, -8.1284), atol=2e-4)


def test_from_hf_reads_a_full_preprocessor_config(tmp_path):
    """A real-style preprocessor_config.json mixes image and audio keys (and sample-count duplicates)."""
    cfg = {"feature_extractor_type": "Gemma3nAudioFeatureExtractor", "feature_size": 128, "frame_length": 512,
           "hop_length": 160, "fft_length": 1024, "image_processor_type": "SiglipImageProcessorFast",
           "size": {"height": 768, "width": 768}, "sampling_rate": 16000, "preemphasis": 0.97,
           "per_bin_mean": None, "per_bin_stddev": None, "mel_floor": 1e-5}
    (tmp_path / "preprocessor_config.json").write_text(__import__("json").dumps(cfg))
    fe = AudioFeatureExtractor.from_checkpoint(tmp_path)
    assert fe == AudioFeatureExtractor()
    assert (fe.frame_length, fe.hop_length, fe.fft_length) == (512, 160, 1024)
    assert AudioFeatureExtractor.from_checkpoint(tmp_path / "missing") == AudioFeatureExtractor()
    with pytest.raises(UserError, match="sampling_rate"):
        AudioFeatureExtractor.from_hf({"sampling_rate": 44100})
    with pytest.raises(UserError, match="per_bin_mean"):
        AudioFeatureExtractor.from_hf({"per_bin_mean": [0.0] * 3})


def test_extractor_refuses_bad_input():
    fe = AudioFeatureExtractor()
    with pytest.raises(UserError, match="mono"):
        fe(np.zeros((2, 1000), np.float32))
    with pytest.raises(UserError, match="at most 30 s"):
        fe(np.zeros(MAX_SAMPLES + 1, np.float32))
    with pytest.raises(UserError, match="shorter than one"):
        fe(np.zeros(300, np.float32))  # < 513 samples even after padding to 384
    assert len(fe(np.zeros(300, np.float32), pad_to_window=True).mask) == 2997  # fine inside the window


# ------------------------------------------------------------------ soft tokens

def test_soft_token_counts():
    fe = AudioFeatureExtractor()
    full = fe(np.zeros(MAX_SAMPLES, np.float32))
    assert audio_soft_tokens(full) == (AUDIO_SEQ_LENGTH, AUDIO_SEQ_LENGTH) == (188, 188)
    # 1 token per 160 ms: 16 frames of 10 ms.
    half = fe(np.zeros(8_000, np.float32), pad_to_window=True)
    assert audio_soft_tokens(half) == (188, 4)  # frames 0, 16, 32, 48 of 50 valid ones
    assert encoder_steps(2997) == 188 and encoder_steps(48) == 3 and encoder_steps(1) == 1


def test_soft_token_counts_equal_the_hf_encoder():
    """Run transformers' Gemma3nAudioEncoder (tiny width, real time geometry) on our features."""
    torch = pytest.importorskip("torch")
    from transformers.models.gemma3n.configuration_gemma3n import Gemma3nAudioConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nAudioEncoder

    cfg = Gemma3nAudioConfig(hidden_size=16, conf_num_hidden_layers=1, conf_num_attention_heads=2,
                             sscp_conv_channel_size=(4, 4), vocab_size=8)
    torch.manual_seed(0)
    encoder = Gemma3nAudioEncoder(cfg).eval()
    fe, rng = AudioFeatureExtractor(), np.random.default_rng(0)
    cases = [(8_000, False), (8_000, True), (20_837, False), (12_345, True), (700, False), (MAX_SAMPLES, False)]
    for n, window in cases:
        f = fe(rng.standard_normal(n).astype(np.float32), pad_to_window=window)
        with torch.no_grad():  # HF takes the mask inverted (True = padding), as Gemma3nModel passes it
            out = encoder(torch.from_numpy(f.features)[None], torch.from_numpy(~f.mask)[None])
        want = (out.last_hidden_state.shape[1], int((~out.audio_mel_mask).sum()))
        assert audio_soft_tokens(f) == want, (n, window)


# ------------------------------------------------------------------ resampling

def _peak(y, sr=SR):
    y = y[len(y) // 4: 3 * len(y) // 4].astype(np.float64)
    w = np.hanning(len(y))
    spec = np.abs(np.fft.rfft(y * w))
    k = int(np.argmax(spec))
    # parabolic interpolation on the log magnitude gives the frequency to a fraction of a bin
    a, b, c = np.log(spec[k - 1: k + 2])
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * sr / len(y), spec[k] / (w.sum() / 2)


@pytest.mark.parametrize("sr", [44_100, 48_000, 22_050, 8_000])
def test_resample_preserves_tones(sr):
    for freq in (440.0, 1000.0, 3000.0):
        if freq >= sr / 2:
            continue
        y = resample(_tone(freq, sr, 2.0, amp=1.0), sr, SR)
        assert len(y) == 2 * SR
        f_est, amp = _peak(y)
        ideal = np.sin(2 * np.pi * freq * np.arange(len(y)) / SR)
        interior = slice(SR // 4, -SR // 4)  # away from the zero-padded edges
        err = float(np.abs(y[interior] - ideal[interior]).max())
        # Passband ripple of a 32-lobe Kaiser sinc is ~1e-5; float32 taps add ~1e-6.
        assert abs(f_est - freq) < 0.05 and abs(20 * np.log10(amp)) < 0.01 and err < 1e-4, (sr, freq, f_est, err)


@pytest.mark.parametrize("sr", [44_100, 48_000])
def test_resample_suppresses_aliasing(sr):
    """Tones above the new 8 kHz Nyquist must vanish, not fold back into the band."""
    for freq in (9_000.0, 12_000.0):
        y = resample(_tone(freq, sr, 1.0, amp=1.0), sr, SR)[SR // 8: -SR // 8]
        db = 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2) / 0.5) + 1e-30)
        print(f"{sr} Hz, {freq:.0f} Hz tone → {db:.1f} dB")
        assert db < -90, (sr, freq, db)


# ------------------------------------------------------------------ files

def test_load_audio_formats_and_stereo(tmp_path):
    left, right = _tone(1000, 44_100, 1.0, 0.5), _tone(1000, 44_100, 1.0, 0.25)
    stereo = np.stack([left, right], axis=1)
    cases = {"a.wav": ("PCM_16", 44_100), "a.flac": ("PCM_24", 44_100), "a.ogg": ("VORBIS", 44_100)}
    for name, (subtype, sr) in cases.items():
        soundfile.write(tmp_path / name, stereo, sr, subtype=subtype)
        y = load_audio(tmp_path / name)
        assert y.dtype == np.float32 and y.ndim == 1 and len(y) == SR, name
        f_est, amp = _peak(y)
        assert abs(f_est - 1000) < 0.5, name
        # mono = mean of the channels: amplitude (0.5 + 0.25) / 2; lossy Vorbis gets 0.2 dB
        assert abs(20 * np.log10(amp / 0.375)) < (0.2 if name.endswith("ogg") else 0.01), (name, amp)
    soundfile.write(tmp_path / "b.wav", _tone(300, 8_000, 0.5), 8_000, subtype="FLOAT")
    y = load_audio((tmp_path / "b.wav").read_bytes())  # bytes work too
    assert len(y) == 8_000 and abs(_peak(y)[0] - 300) < 0.5


def test_load_audio_errors(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not audio at all\n" * 20)
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(400))
    soundfile.write(tmp_path / "silent0.wav", np.zeros((0, 1), np.float32), SR)
    for name, pattern in [("empty.wav", "empty"), ("notes.txt", "not a readable audio"),
                          ("junk.wav", "not a readable audio"), ("silent0.wav", "no samples"),
                          ("missing.wav", "does not exist")]:
        with pytest.raises(UserError, match=pattern) as e:
            load_audio(tmp_path / name)
        assert name in str(e.value)
    bad = np.zeros((SR, 1), np.float32)
    bad[5] = np.nan
    soundfile.write(tmp_path / "nan.wav", bad, SR, subtype="FLOAT")
    with pytest.raises(UserError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_long_audio_refused_or_split(tmp_path):
    sr = 48_000
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, int(sr * 61.5)).astype(np.float32)
    soundfile.write(tmp_path / "long.flac", wave, sr)
    with pytest.raises(UserError, match=r"61\.5 s.*split"):
        load_audio(tmp_path / "long.flac")
    chunks = load_audio(tmp_path / "long.flac", split=True)
    assert isinstance(chunks, list) and len(chunks) == 3
    assert all(len(c) <= MAX_SAMPLES for c in chunks)
    stored, _ = soundfile.read(tmp_path / "long.flac", dtype="float32")  # 16-bit FLAC: re-read, not `wave`
    np.testing.assert_array_equal(np.concatenate(chunks), resample(stored, sr, SR))  # nothing lost
    assert isinstance(load_audio(tmp_path / "long.flac", split=True), list)
    soundfile.write(tmp_path / "short.wav", wave[: sr * 2], sr)
    short = load_audio(tmp_path / "short.wav", split=True)
    assert len(short) == 1 and len(short[0]) == 2 * SR


def test_no_torch_at_import():
    code = ("import edge.runtime.audio, edge.runtime.image, sys; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_long_audio_is_refused_from_its_header(tmp_path):
    """A sparse one-hour 6-channel WAV: refused by its header, before gigabytes are decoded."""
    import struct

    rate, channels, seconds = 48_000, 6, 3600
    data = rate * channels * 2 * seconds
    path = tmp_path / "hour.wav"
    with path.open("wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack(
            "<IHHIIHH", 16, 1, channels, rate, rate * channels * 2, channels * 2, 16) + b"data" + struct.pack("<I", data))
        f.truncate(44 + data)  # sparse: no disk used, 2 GB to decode
    with pytest.raises(UserError, match=r"3600\.0 s long"):
        load_audio(path)
