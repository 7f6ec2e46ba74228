"""Audio inputs (audio.*): the log-Mel spectrogram (a torch STFT and our mel filterbank, checked
against the filterbank's definition and a pure tone), 128 x 128 -> 64 tokens, waveform frames
(at most 256 tokens), and the audio embedding inside the shared tower."""

import math

import pytest
import torch

from aria_train.config import ConfigError
from aria_train.model.audio import AudioConfig, AudioEmbeddings
from aria_train.model.vision import VisionTransformer
from aria_train.model.vision_config import VisionConfig
from aria_train.nn.audio_features import AudioFeatureSpec, hz_to_mel, mel_filterbank
from aria_train.nn.media import MediaBatch
from aria_train.train.run_config import build_config

SR = 16_000


def _tone(hz, seconds=8.0, sr=SR):
    t = torch.arange(int(seconds * sr), dtype=torch.float64) / sr
    return torch.sin(2 * math.pi * hz * t).float()


def test_mel_filterbank_equals_its_definition():
    bins, mels, sr = 33, 6, 8000
    fb = mel_filterbank(bins, mels, sr)
    mel_max = 2595 * math.log10(1 + (sr / 2) / 700)
    points = [700 * (10 ** (mel_max * i / (mels + 1) / 2595) - 1) for i in range(mels + 2)]  # HTK, equally spaced mels
    for k in range(bins):
        f = k * (sr / 2) / (bins - 1)
        for m in range(mels):
            lo, mid, hi = points[m], points[m + 1], points[m + 2]
            expected = max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid)))
            assert fb[k, m].item() == pytest.approx(expected, abs=1e-6), (k, m)
    assert hz_to_mel(1000.0) == pytest.approx(1000.0, rel=1e-3)  # HTK: 1 kHz is about 1000 mel


def test_spectrogram_is_128_x_128_and_a_tone_lights_its_mel_bin():
    spec = AudioFeatureSpec("spectrogram")
    log_mel = spec.spectrogram(_tone(1000.0))
    assert log_mel.shape == (128, 128)
    assert abs(float(log_mel.mean())) < 1e-4 and float(log_mel.std()) == pytest.approx(1.0, abs=1e-3)
    edges = [700 * (10 ** (hz_to_mel(8000.0) * i / 129 / 2595) - 1) for i in range(130)]
    nearest = min(range(128), key=lambda m: abs(edges[m + 1] - 1000.0))  # the filter centred nearest 1 kHz
    peak = log_mel[:, 10:-10].mean(dim=1).argmax().item()
    assert abs(peak - nearest) <= 1
    patches, grid = spec.spectrogram_patches(_tone(440.0, seconds=3.0))  # short clips are zero-padded to 8 s
    assert grid == (8, 8) and patches.shape == (64, 256)
    torch.testing.assert_close(patches[9], spec.spectrogram(_tone(440.0, seconds=3.0))[16:32, 16:32].reshape(-1))


def test_waveform_frames_are_256_samples_and_at_most_256_tokens():
    spec = AudioFeatureSpec("waveform")
    frames, grid = spec.waveform_frames(torch.arange(1000, dtype=torch.float32))
    assert grid == (1, 4) and frames.shape == (4, 256)
    torch.testing.assert_close(frames.reshape(-1)[:1000], torch.arange(1000, dtype=torch.float32))
    assert frames.reshape(-1)[1000:].abs().sum() == 0
    long, grid = spec.waveform_frames(torch.randn(8 * SR, 2))  # 8 s stereo: mixed down, truncated
    assert grid == (1, 256) and long.shape == (256, 256)


def _audio_tower(input_, **audio_kw):
    audio = AudioConfig(input=input_, **audio_kw).validate()
    cfg = VisionConfig(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24, patch_size=2, image_size=8)
    tower = VisionTransformer(cfg, audio)
    tower.init_weights(0)
    return tower, audio


def test_spectrogram_embedding_positions_are_dilated_and_the_clip_runs_through_the_tower():
    tower, audio = _audio_tower("spectrogram", position_buckets=16)
    emb = tower.audio_embeddings
    patches, grid = audio.feature_spec().features(_tone(300.0))
    assert grid == (8, 8)
    pos = emb.positions([grid], "cpu")
    f_rows = torch.arange(8).repeat_interleave(8) * 2  # 8 of 16 buckets: stride 2
    t_rows = torch.arange(8).repeat(8) * 2
    torch.testing.assert_close(pos, emb.frequency_embedding.weight[f_rows] + emb.time_embedding.weight[t_rows])
    conv = torch.nn.functional.conv2d(audio.feature_spec().spectrogram(_tone(300.0))[None, None],
                                      emb.patch_embedding.weight, emb.patch_embedding.bias, stride=16)
    torch.testing.assert_close(emb(patches, [grid]) - pos, conv[0].permute(1, 2, 0).reshape(64, 16), rtol=1e-5, atol=1e-5)
    image = torch.randn(4, 12)
    out = tower.encode(MediaBatch(image, [(2, 2)], audio_patches=patches, audio_grid=[grid],
                                  media_order=["audio", "image"]))
    assert out.lengths == [64, 4]


def test_waveform_embedding_and_the_token_limit():
    tower, audio = _audio_tower("waveform")
    frames, grid = audio.feature_spec().features(torch.randn(3000))
    out = tower.encode(MediaBatch(audio_patches=frames, audio_grid=[grid]))
    assert out.lengths == [12] and grid == (1, 12)
    with pytest.raises(ValueError, match="257 waveform frames exceed audio.max_waveform_tokens=256"):
        tower.audio_embeddings.positions([(1, 257)], "cpu")
    dense = VisionTransformer(tower.cfg)
    with pytest.raises(ValueError, match="audio items but the encoder has no audio embedding"):
        dense.encode(MediaBatch(audio_patches=frames, audio_grid=[grid]))


def test_audio_config_checks():
    cfg = build_config(2, overrides={"audio.input": "spectrogram"})
    assert cfg.audio.queries_for(cfg.projector) == 4  # the tiny projector's smallest crop
    with pytest.raises(ConfigError, match="audio.patch_size=12 does not divide audio.num_mel_bins=128"):
        build_config(2, overrides={"audio.input": "spectrogram", "audio.patch_size": 12})
    with pytest.raises(ConfigError, match="audio.queries=9 exceeds the projector's 8 learned queries"):
        build_config(2, overrides={"audio.input": "waveform", "audio.queries": 9})
    with pytest.raises(ConfigError, match="audio.input='mp3' is not one of none, spectrogram, waveform"):
        build_config(2, overrides={"audio.input": "mp3"})
