"""Audio features from a waveform, computed with torch alone (no torchaudio: its wheels pin
their own torch), shared by the data pipeline (which computes them) and the model (which
embeds them). IMP (arXiv 2305.06324) feeds audio as a log-Mel spectrogram (16 kHz, 8 s,
128 x 128 features, 16 x 16 patches = 64 tokens) or as raw waveform frames (256 samples each,
up to 256 tokens).

Spectrogram (AudioFeatureSpec.spectrogram): the waveform, mixed to mono, is cut or zero-padded
to clip_seconds; a power STFT (Hann window of n_fft samples, hop = clip samples / num_frames,
centred frames, the first num_frames kept) goes through an HTK mel filterbank (mel_filterbank:
num_mel_bins triangles between 0 Hz and Nyquist, unnormalised, torchaudio's melscale_fbanks
with mel_scale="htk" and norm=None), then log(mel + 1e-6), standardised per clip (zero mean,
unit variance) -> [num_mel_bins, num_frames], low frequencies first.
Waveform frames (AudioFeatureSpec.waveform_frames): mono, cut to max_tokens * kernel samples,
zero-padded to a whole frame -> [n, kernel].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def hz_to_mel(hz):
    return 2595.0 * math.log10(1.0 + hz / 700.0) if isinstance(hz, (int, float)) else 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(num_bins: int, num_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float = 0.0) -> torch.Tensor:
    """[num_bins, num_mels] triangular filters (HTK mel scale, unnormalised) over the FFT bins
    0 .. sample_rate / 2. f_max 0 = Nyquist."""
    f_max = f_max or sample_rate / 2
    bin_hz = torch.linspace(0, sample_rate / 2, num_bins, dtype=torch.float64)
    edges = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), num_mels + 2, dtype=torch.float64))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_hz[:, None] - lower) / (centre - lower)
    falling = (upper - bin_hz[:, None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def to_mono(waveform: torch.Tensor) -> torch.Tensor:
    """[N] or [N, channels] -> [N] float32 (channels averaged)."""
    waveform = torch.as_tensor(waveform, dtype=torch.float32)
    if waveform.dim() == 2:
        waveform = waveform.mean(dim=1)
    if waveform.dim() != 1:
        raise ValueError(f"waveform of shape {tuple(waveform.shape)}: expected [samples] or [samples, channels]")
    return waveform


@dataclass(frozen=True)
class AudioFeatureSpec:
    """Plain sizes of the audio features (aria_train.model.audio.AudioConfig.feature_spec)."""

    kind: str  # "spectrogram" | "waveform"
    sample_rate: int = 16_000
    clip_seconds: float = 8.0
    num_mel_bins: int = 128
    num_frames: int = 128
    n_fft: int = 2048
    patch_size: int = 16
    waveform_kernel: int = 256
    max_waveform_tokens: int = 256

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def hop(self) -> int:
        return self.clip_samples // self.num_frames

    def spectrogram(self, waveform: torch.Tensor) -> torch.Tensor:
        """waveform [N] or [N, channels] at sample_rate -> log-Mel [num_mel_bins, num_frames]."""
        mono = to_mono(waveform)[: self.clip_samples]
        mono = torch.nn.functional.pad(mono, (0, self.clip_samples - mono.numel()))
        window = torch.hann_window(self.n_fft, dtype=torch.float32)
        stft = torch.stft(mono, self.n_fft, hop_length=self.hop, window=window, center=True, return_complex=True)
        power = stft.abs().square()[:, : self.num_frames]  # [n_fft // 2 + 1, frames]
        mel = mel_filterbank(self.n_fft // 2 + 1, self.num_mel_bins, self.sample_rate).T @ power
        log_mel = torch.log(mel + 1e-6)
        return (log_mel - log_mel.mean()) / (log_mel.std() + 1e-5)

    def spectrogram_patches(self, waveform: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> (patches [h*w, p*p] of the spectrogram, row-major over (frequency, time), (h, w))."""
        spec = self.spectrogram(waveform)
        p = self.patch_size
        h, w = spec.shape[0] // p, spec.shape[1] // p
        patches = spec.reshape(h, p, w, p).permute(0, 2, 1, 3).reshape(h * w, p * p)
        return patches, (h, w)

    def waveform_frames(self, waveform: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """-> (frames [n, kernel], (1, n)), n = ceil(samples / kernel) <= max_waveform_tokens."""
        k = self.waveform_kernel
        mono = to_mono(waveform)[: k * self.max_waveform_tokens]
        n = max(1, math.ceil(mono.numel() / k))
        mono = torch.nn.functional.pad(mono, (0, n * k - mono.numel()))
        return mono.view(n, k), (1, n)

    def features(self, waveform: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The encoder's input for one clip: (patches [n, dim], grid (h, w))."""
        if self.kind == "spectrogram":
            return self.spectrogram_patches(waveform)
        return self.waveform_frames(waveform)

    @property
    def patch_dim(self) -> int:
        return self.patch_size**2 if self.kind == "spectrogram" else self.waveform_kernel
