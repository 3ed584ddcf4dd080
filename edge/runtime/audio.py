"""Audio input for the simulator: decode, resample to 16 kHz, log-mel features. numpy + soundfile only.

Mirrors transformers 5.23.0 `models/gemma3n/feature_extraction_gemma3n.py`
(`Gemma3nAudioFeatureExtractor`) operation for operation, dtypes included, so the features
equal HF's bit for bit:

    waveform (float32, right-padded with `padding_value`)
      → frames of frame_length+1 samples every hop (HF's unfold; no centring, no reflection)
      → HTK pre-emphasis: [x0·(1−p), x1−p·x0, …, x511−p·x510] (the frame's last sample unused)
      → × periodic Hann (float32) → |rfft| with n = 2·next_pow2(frame_length) (fft_overdrive)
      → @ HTK triangular mel filters (125–7600 Hz, no area norm) → log(max(mel, mel_floor))
      → optional per-bin (x − mean) / stddev

HF pads the waveform to a multiple of 128 samples ("longest"); `pad_to_window=True` instead pads
to the encoder's fixed 30 s window (HF's `padding="max_length", max_length=480000`). The mask is
HF's sample mask read every hop: frame f is valid iff f·hop < number of real samples.

Soft tokens (modeling_gemma3n `Gemma3nAudioEncoder`): SSCP's two 3×3 stride-2 convs with time pad
(0, 2) give T → ceil(T/2) → ceil(T/2); the conformer output keeps every 4th step. So a 30 s window
(2997 frames) gives 188 encoder steps = the 188 soft tokens `Gemma3nProcessor` always inserts;
a step is real audio iff its first frame (16·t) is valid, the rest become the padding embedding.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import soundfile

from edge.errors import UserError
from edge.fileio import read_processor_settings

SAMPLE_RATE = 16_000
MAX_SECONDS = 30
MAX_SAMPLES = SAMPLE_RATE * MAX_SECONDS  # 480000: HF's max_length, the encoder's window
AUDIO_SEQ_LENGTH = 188  # soft tokens Gemma3nProcessor inserts per clip (config audio_soft_tokens_per_image)


# ---------------------------------------------------------------------------------------------
# Decoding and resampling
# ---------------------------------------------------------------------------------------------


def load_audio(
    path_or_bytes: str | os.PathLike | bytes, target_sr: int = SAMPLE_RATE, *, split: bool = False
) -> np.ndarray | list[np.ndarray]:
    """Decode WAV/FLAC/OGG/MP3 (whatever libsndfile reads) to float32 mono at `target_sr`.

    Longer than 30 s: a UserError, or with `split=True` a list of equal chunks of at most 30 s
    (equal, so no useless few-millisecond tail). With `split=True` the result is always a list.
    """
    name = "<bytes>" if isinstance(path_or_bytes, (bytes, bytearray)) else str(path_or_bytes)
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    if not isinstance(source, io.BytesIO):
        if not Path(source).is_file():
            raise UserError(f"audio file {name} does not exist (or is not a file): check the path")
        if Path(source).stat().st_size == 0:
            raise UserError(f"audio file {name} is empty (0 bytes): record or export the audio again")
    try:
        # The header first: a long clip is refused before it is decoded (an hour of 6-channel audio
        # is gigabytes), and with split=True it is decoded block by block, down-mixed as it goes.
        info = soundfile.info(source)
        if isinstance(source, io.BytesIO):
            source.seek(0)
        seconds = info.frames / info.samplerate if info.samplerate > 0 else 0.0
        if not split and info.frames * target_sr > MAX_SECONDS * target_sr * info.samplerate:
            raise UserError(
                f"audio {name} is {seconds:.1f} s long; Gemma 3n's audio encoder takes at most "
                f"{MAX_SECONDS} s per clip: trim it, or split it into ≤{MAX_SECONDS} s chunks (split=True)"
            )
        sr = info.samplerate
        blocks = [b.mean(axis=1, dtype=np.float32) if b.shape[1] > 1 else b[:, 0].copy()
                  for b in soundfile.blocks(source, blocksize=max(1, sr) * 10, dtype="float32", always_2d=True)]
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise UserError(
            f"{name} is not a readable audio file ({e}); use WAV, FLAC, OGG/Vorbis or MP3, "
            "e.g. `ffmpeg -i INPUT -ar 16000 -ac 1 out.wav`"
        ) from e
    wave = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)  # stereo → mono, per block
    if wave.shape[0] == 0:
        raise UserError(f"audio file {name} has no samples: record or export the audio again")
    if not np.isfinite(wave).all():
        raise UserError(f"audio file {name} contains NaN or infinite samples: re-export it")
    wave = resample(wave, sr, target_sr)
    limit = MAX_SECONDS * target_sr
    if not split:
        if len(wave) > limit:
            raise UserError(
                f"audio {name} is {len(wave) / target_sr:.1f} s long; Gemma 3n's audio encoder takes at most "
                f"{MAX_SECONDS} s per clip: trim it, or split it into ≤{MAX_SECONDS} s chunks (split=True)"
            )
        return wave
    return [np.ascontiguousarray(c) for c in np.array_split(wave, max(1, math.ceil(len(wave) / limit)))]


def _kernel(t: np.ndarray, cutoff: float, half_width: float, beta: float) -> np.ndarray:
    """Kaiser-windowed sinc low-pass at `cutoff` (cycles per input sample), `t` in input samples."""
    inside = np.abs(t) < half_width
    w = np.where(inside, np.i0(beta * np.sqrt(np.clip(1 - (t / half_width) ** 2, 0, 1))) / np.i0(beta), 0.0)
    return 2 * cutoff * np.sinc(2 * cutoff * t) * w


def resample(
    wave: np.ndarray, orig_sr: int, target_sr: int, *, zero_crossings: int = 32, rolloff: float = 0.94,
    beta: float = 10.0,
) -> np.ndarray:
    """Band-limited resampling by a Kaiser-windowed sinc, evaluated polyphase (exact rational ratio).

    The low-pass sits at `rolloff` × the lower Nyquist; `zero_crossings` sinc lobes per side and
    Kaiser β=10 put the stopband ≳ 90 dB down (tests measure the aliasing). Zero-padded edges;
    output length ceil(len·target/orig), as scipy's resample_poly.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if orig_sr == target_sr:
        return wave
    if orig_sr <= 0 or target_sr <= 0:
        raise UserError(f"sample rates must be positive, got {orig_sr} → {target_sr}")
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    cutoff = 0.5 * rolloff * min(1.0, up / down)  # cycles per input sample
    half = zero_crossings / (2 * cutoff)  # kernel half-width in input samples
    taps = int(math.ceil(half)) + 1
    offsets = np.arange(-taps + 1, taps + 1)  # input index − floor(output position)
    n_out = -(-len(wave) * up // down)
    # Output n sits at input position n·down/up = base + r/up; the kernel depends only on r.
    phases = np.arange(up)[:, None] / up
    table = _kernel(phases - offsets[None, :], cutoff, half, beta).astype(np.float32)  # (up, 2·taps)
    padded = np.concatenate([np.zeros(taps, np.float32), wave, np.zeros(taps + down + 1, np.float32)])
    out = np.empty(n_out, np.float32)
    stride = padded.strides[0]
    for r in range(min(up, n_out)):  # outputs n = m·up + r share a phase and step `down` inputs
        m = len(range(r, n_out, up))
        start = (r * down) // up + taps + offsets[0]
        windows = np.lib.stride_tricks.as_strided(
            padded[start:], shape=(m, len(offsets)), strides=(down * stride, stride), writeable=False
        )
        out[r::up] = windows @ table[(r * down) % up]
    return out


# ---------------------------------------------------------------------------------------------
# Log-mel features (Gemma3nAudioFeatureExtractor)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFeatures:
    features: np.ndarray  # (frames, feature_size) float32
    mask: np.ndarray  # (frames,) bool, True = real audio

    @property
    def num_valid_frames(self) -> int:
        return int(self.mask.sum())


@dataclass(frozen=True)
class AudioFeatureExtractor:
    """`Gemma3nAudioFeatureExtractor`'s settings (HF names and class defaults = the real E2B's)."""

    feature_size: int = 128  # mel bins
    sampling_rate: int = SAMPLE_RATE
    padding_value: float = 0.0  # what the waveform is padded with
    frame_length_ms: float = 32.0  # 512 samples
    hop_length_ms: float = 10.0  # 160 samples
    min_frequency: float = 125.0
    max_frequency: float = 7600.0
    preemphasis: float = 0.97
    preemphasis_htk_flavor: bool = True  # first sample scaled by (1 − p), not differenced
    fft_overdrive: bool = True  # FFT length doubled: 1024 for a 512-sample frame
    dither: float = 0.0  # > 0 adds N(0, dither²) noise: not reproducible, off in E2B
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-5
    per_bin_mean: tuple[float, ...] | None = None
    per_bin_stddev: tuple[float, ...] | None = None

    @classmethod
    def from_hf(cls, cfg: dict) -> "AudioFeatureExtractor":
        """From a `preprocessor_config.json` dict; keys of the image processor are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in cfg.items() if k in names}
        for k in ("per_bin_mean", "per_bin_stddev"):
            if kw.get(k) is not None:
                kw[k] = tuple(float(x) for x in kw[k])
                if len(kw[k]) != kw.get("feature_size", cls.feature_size):
                    raise UserError(f"preprocessor_config.json: {k} has {len(kw[k])} values, expected feature_size")
        if kw.get("sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise UserError(f"preprocessor_config.json: sampling_rate {kw['sampling_rate']} ≠ 16000 (Gemma 3n's)")
        return cls(**kw)

    @classmethod
    def from_checkpoint(cls, ckpt_dir: str | os.PathLike) -> "AudioFeatureExtractor":
        """The checkpoint's settings (preprocessor_config.json, or processor_config.json's nested
        feature_extractor); class defaults when it has neither."""
        raw = read_processor_settings(ckpt_dir)
        return cls() if raw is None else cls.from_hf(raw)

    # Derived constants, computed exactly as HF's __init__ does.
    @property
    def frame_length(self) -> int:
        return int(round(self.sampling_rate * self.frame_length_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        return int(round(self.sampling_rate * self.hop_length_ms / 1000.0))

    @property
    def fft_length(self) -> int:
        return 2 ** math.ceil(math.log2(self.frame_length)) * (2 if self.fft_overdrive else 1)

    @cached_property
    def window(self) -> np.ndarray:  # periodic Hann, (frame_length,) float32
        n = np.arange(self.frame_length, dtype=np.float32)
        return (0.5 * (1 - np.cos(2 * np.pi * n / self.frame_length))).astype(np.float32)

    @cached_property
    def mel_filters(self) -> np.ndarray:  # (fft_length//2 + 1, feature_size) float64, HTK mel
        all_freqs = np.arange(self.fft_length // 2 + 1, dtype=np.float32) * (self.sampling_rate / self.fft_length)
        m_min = 2595.0 * math.log10(1.0 + self.min_frequency / 700.0)
        m_max = 2595.0 * math.log10(1.0 + self.max_frequency / 700.0)
        f_pts = 700.0 * (10 ** (np.linspace(m_min, m_max, self.feature_size + 2) / 2595.0) - 1.0)
        f_diff = f_pts[1:] - f_pts[:-1]
        slopes = f_pts[None, :] - all_freqs[:, None]  # (n_freqs, n_mels + 2)
        down, up = -slopes[:, :-2] / f_diff[:-1], slopes[:, 2:] / f_diff[1:]
        return np.maximum(np.zeros(1, np.float32), np.minimum(down, up))

    def num_frames(self, num_samples: int) -> int:
        return max(0, (num_samples - (self.frame_length + 1)) // self.hop_length + 1)

    def __call__(self, waveform: np.ndarray, *, pad_to_window: bool = False, seed: int | None = None) -> AudioFeatures:
        """Features of one mono 16 kHz clip of at most 30 s (equals HF's extractor on it)."""
        wave = np.asarray(waveform)
        if wave.ndim != 1:
            raise UserError(f"expected a mono waveform (1-D), got shape {wave.shape}: average the channels first")
        wave = wave.astype(np.float32)  # HF casts float64 to float32 when padding
        n = len(wave)
        if n > MAX_SAMPLES:
            raise UserError(
                f"audio is {n / SAMPLE_RATE:.1f} s; at most {MAX_SECONDS} s: split it (load_audio(split=True))"
            )
        target = MAX_SAMPLES if pad_to_window else -(-n // 128) * 128  # HF: pad_to_multiple_of=128
        if self.num_frames(target) == 0:
            raise UserError(f"audio clip of {n} samples is shorter than one {self.frame_length_ms:g} ms frame")
        wave = np.concatenate([wave, np.full(target - n, self.padding_value, np.float32)])
        return AudioFeatures(self._log_mel(wave, seed), self._mask(n, target))

    def _log_mel(self, wave: np.ndarray, seed: int | None) -> np.ndarray:
        if self.dither > 0.0:
            wave = wave + self.dither * np.random.default_rng(seed).standard_normal(wave.shape).astype(wave.dtype)
        if self.input_scale_factor != 1.0:
            wave = wave * self.input_scale_factor
        frames = np.lib.stride_tricks.sliding_window_view(wave, self.frame_length + 1)[:: self.hop_length]
        p = self.preemphasis
        if p > 0.0 and self.preemphasis_htk_flavor:
            frames = np.concatenate([frames[:, :1] * (1.0 - p), frames[:, 1:-1] - p * frames[:, :-2]], axis=-1)
        elif p > 0.0:
            frames = frames[:, 1:] - p * frames[:, :-1]
        else:
            frames = frames[:, :-1]
        magnitude = np.abs(np.fft.rfft(frames * self.window, n=self.fft_length, axis=-1))  # (T, fft/2+1)
        log_mel = np.log(np.maximum(magnitude @ self.mel_filters, np.float64(self.mel_floor)))  # (T, mels)
        if self.per_bin_mean is not None:
            log_mel = log_mel - np.asarray(self.per_bin_mean)
        if self.per_bin_stddev is not None:
            log_mel = log_mel / np.asarray(self.per_bin_stddev)
        return log_mel.astype(np.float32)

    def _mask(self, num_samples: int, padded: int) -> np.ndarray:
        frames = self.num_frames(padded)
        return np.arange(frames) * self.hop_length < num_samples


# ---------------------------------------------------------------------------------------------
# Soft tokens
# ---------------------------------------------------------------------------------------------


def encoder_steps(
    num_frames: int, *, time_strides=(2, 2), time_kernels=(3, 3), conf_reduction_factor: int = 4
) -> int:
    """Encoder output length for `num_frames` mel frames (SSCP convs, then keep 1 step of 4)."""
    t = num_frames
    for stride, kernel in zip(time_strides, time_kernels):
        t = (t + (kernel - 1) - kernel) // stride + 1  # time pad (0, kernel−1), no dilation
    return -(-t // conf_reduction_factor)


def audio_soft_tokens(features: AudioFeatures, **encoder_geometry) -> tuple[int, int]:
    """(encoder steps, steps carrying audio) for these features; the model pads to 188 tokens."""
    steps = encoder_steps(len(features.mask), **encoder_geometry)
    stride = math.prod(encoder_geometry.get("time_strides", (2, 2))) * encoder_geometry.get("conf_reduction_factor", 4)
    idx = np.minimum(np.arange(steps) * stride, len(features.mask) - 1)  # HF clamps the gather index
    return steps, int(features.mask[idx].sum())
