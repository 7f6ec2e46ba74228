"""Audio inputs (`audio.*`, IMP): a clip becomes encoder tokens through its own embedding and
then runs through the ViT's layers like an image (one tower for every modality), and the
projector turns it into `audio.queries` decoder tokens.

    spectrogram  log-Mel [128 mel bins x 128 frames] of 8 s at 16 kHz (aria_train.nn.audio_features),
                 16 x 16 patches -> 8 x 8 = 64 tokens; patch_embedding Conv2d(1, D, 16, 16);
                 positions: frequency_embedding + time_embedding tables of position_buckets rows
                 each, dilated like images' (vision_positions.dilated_positions).
    waveform     frames of 256 samples -> up to 256 tokens; patch_embedding Conv1d(1, D, 256, 256);
                 positions: one table of max_waveform_tokens rows (truncated, like text).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from aria_train.config import ConfigError, require_positive
from aria_train.model.vision_positions import dilated_positions
from aria_train.nn.audio_features import AudioFeatureSpec

AudioInput = Literal["none", "spectrogram", "waveform"]
AUDIO_INPUTS: tuple[str, ...] = typing.get_args(AudioInput)


@dataclass
class AudioConfig:
    input: AudioInput = "none"  # none = no audio inputs (audio samples are bad samples)
    sample_rate: int = 16_000  # clips at another rate are resampled (linear interpolation)
    clip_seconds: float = 8.0  # spectrogram: clips cut or zero-padded to this length
    num_mel_bins: int = 128
    num_frames: int = 128  # spectrogram frames over clip_seconds (hop = clip samples / num_frames)
    n_fft: int = 2048  # STFT window (Hann) and FFT size
    patch_size: int = 16  # spectrogram patches: (128 / 16) x (128 / 16) = 64 tokens
    position_buckets: int = 0  # rows of the frequency / time tables; 0 = patches per side (no dilation)
    waveform_kernel: int = 256  # samples per waveform token
    max_waveform_tokens: int = 256
    queries: int = 0  # decoder tokens per clip (projector queries); 0 = the projector's smallest count

    @property
    def enabled(self) -> bool:
        return self.input != "none"

    def validate(self, projector=None) -> "AudioConfig":
        if not self.enabled:
            return self
        require_positive(self, "audio", "sample_rate", "clip_seconds", "num_mel_bins", "num_frames", "n_fft",
                         "patch_size", "waveform_kernel", "max_waveform_tokens")
        if self.input == "spectrogram":
            for name in ("num_mel_bins", "num_frames"):
                if getattr(self, name) % self.patch_size:
                    raise ConfigError(f"audio.patch_size={self.patch_size} does not divide audio.{name}={getattr(self, name)}")
            if self.feature_spec().hop < 1:
                raise ConfigError(f"audio.num_frames={self.num_frames} exceeds the samples of audio.clip_seconds")
            if self.position_buckets and self.position_buckets < max(self.grid_side):
                raise ConfigError(f"audio.position_buckets={self.position_buckets} is fewer than the patches per side "
                                  f"{max(self.grid_side)}")
        if self.queries < 0:
            raise ConfigError(f"audio.queries={self.queries} must be >= 0 (0 = the projector's smallest count)")
        if projector is not None and self.queries_for(projector) > projector.max_queries:
            raise ConfigError(f"audio.queries={self.queries} exceeds the projector's {projector.max_queries} learned queries")
        return self

    @property
    def grid_side(self) -> tuple[int, int]:
        """Spectrogram patches (frequency, time)."""
        return self.num_mel_bins // self.patch_size, self.num_frames // self.patch_size

    def queries_for(self, projector) -> int:
        return self.queries or min(projector.patch_to_query.values())

    def feature_spec(self) -> AudioFeatureSpec:
        return AudioFeatureSpec(self.input, self.sample_rate, self.clip_seconds, self.num_mel_bins, self.num_frames,
                                self.n_fft, self.patch_size, self.waveform_kernel, self.max_waveform_tokens)


class AudioEmbeddings(nn.Module):
    """Audio patches [T, n] with grid [(h, w)] per clip -> [T, D] (module notes)."""

    def __init__(self, cfg: AudioConfig, hidden_size: int):
        super().__init__()
        self.cfg = cfg
        if cfg.input == "spectrogram":
            self.patch_embedding = nn.Conv2d(1, hidden_size, cfg.patch_size, cfg.patch_size)
            rows_f, rows_t = (cfg.position_buckets,) * 2 if cfg.position_buckets else cfg.grid_side
            self.frequency_embedding = nn.Embedding(rows_f, hidden_size)
            self.time_embedding = nn.Embedding(rows_t, hidden_size)
        else:
            self.patch_embedding = nn.Conv1d(1, hidden_size, cfg.waveform_kernel, cfg.waveform_kernel)
            self.position_embedding = nn.Embedding(cfg.max_waveform_tokens, hidden_size)

    def forward(self, patches: torch.Tensor, grid) -> torch.Tensor:
        weight = self.patch_embedding.weight.flatten(1)
        x = F.linear(patches.to(weight.dtype), weight, self.patch_embedding.bias)
        return x + self.positions(grid, patches.device)

    def positions(self, grid, device) -> torch.Tensor:
        """[(h, w)] per clip -> [T, D] position embeddings."""
        rows = []
        for h, w in grid:
            if self.cfg.input == "spectrogram":
                f = dilated_positions(h, self.frequency_embedding.num_embeddings)
                t = dilated_positions(w, self.time_embedding.num_embeddings)
                rows.append(torch.stack([f.repeat_interleave(w), t.repeat(h)]))
            else:
                if w > self.position_embedding.num_embeddings:
                    raise ValueError(f"{w} waveform frames exceed audio.max_waveform_tokens={self.cfg.max_waveform_tokens}")
                rows.append(torch.stack([torch.arange(w), torch.arange(w)]))
        ids = torch.cat(rows, dim=1).to(device) if rows else torch.zeros(2, 0, dtype=torch.long, device=device)
        if self.cfg.input == "spectrogram":
            return self.frequency_embedding(ids[0]) + self.time_embedding(ids[1])
        return self.position_embedding(ids[0])


__all__ = ["AUDIO_INPUTS", "AudioConfig", "AudioEmbeddings"]
