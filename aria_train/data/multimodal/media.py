"""Media members other than images (IMP's options): audio clips and videos as tubelet clips.

Members (in a shard: `KEY.<i>.<ext>`, or `KEY.wav` / `KEY.flac` as media 0; in JSON records the
path a record names):
  .wav   PCM 8/16/24/32-bit, any channels: the stdlib `wave` module
  .flac  through the `soundfile` package (pip install "aria-train[audio]"); without it a run
         stops at the first FLAC member with one line naming it
  .npy   audio: float or int16 [samples] / [samples, channels], at the sample's "sample_rate"
         (JSON field; default audio.sample_rate); video: uint8 [frames, H, W, 3] (or [frames, H, W])
A member whose header does not parse is a bad sample (schema of the length index); one whose
samples do not decode after its header did is trained on as silence / black frames without loss,
and counted as bad, like an image whose pixels fail (mixture.py).

Encoder inputs (MediaSettings, from the run's vision and audio configs):
  audio  resampled to audio.sample_rate (linear interpolation), mono, then the log-Mel patches or
         waveform frames of aria_train.nn.audio_features;
  clip   frames resized like a single-crop image (the mode's crop size), at most max_frames kept
         (a longer video is truncated: time positions are not dilated), the last frame repeated
         up to a multiple of tubelet_frames, cut into tubelets (aria_train.nn.image_patches).
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from aria_train.data.errors import DataError
from aria_train.data.multimodal.errors import BadSample, one_line
from aria_train.nn.audio_features import AudioFeatureSpec

AUDIO_EXTENSIONS = frozenset({"wav", "flac"})
ARRAY_EXTENSION = "npy"


@dataclass(frozen=True)
class MediaSettings:
    """Plain sizes the data side needs for clips and audio (0 / None = that input is off)."""

    tubelet_frames: int = 0  # vision.tubelet_frames when vision.patch is tubelet, else 0
    max_frames: int = 16
    audio: Optional[AudioFeatureSpec] = None  # audio.input != none
    audio_queries: int = 0  # decoder tokens per clip


@dataclass
class PlannedImage:
    """One media block of a sample: an image, or with IMP's options a clip or an audio clip."""

    start: int  # index of its <fim_prefix> in the sample's tokens
    end: int  # one past its <fim_suffix>
    index: int  # media index in the sample (a clip of frames: its first frame)
    data: Optional[bytes]  # encoded image / audio / .npy video (None for a clip of frame images)
    size: tuple  # (width, height) from the header; audio: (samples, sample rate)
    num_crops: int
    queries: int
    kind: str = "image"  # image | clip | audio
    name: str = ""  # member name or path (its extension says the format)
    frames: tuple = ()  # a clip of frame images: their encoded bytes, in order


def extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name else ""


# ---- headers (planning) --------------------------------------------------------------------------
def npy_shape(data: bytes, what: str) -> tuple:
    try:
        stream = io.BytesIO(data)
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(stream)
    except Exception as err:  # numpy raises ValueError / others for a damaged header
        raise BadSample(f"{what}: not a .npy array ({one_line(err) or type(err).__name__})")
    if dtype.hasobject:
        raise BadSample(f"{what}: .npy of Python objects is not allowed")
    return tuple(shape)


def audio_header(data: bytes, name: str, what: str, default_rate: int) -> tuple[int, int]:
    """(samples, sample rate) from an audio member's header; BadSample when it does not parse."""
    ext = extension(name)
    if ext == "wav":
        try:
            with wave.open(io.BytesIO(data)) as w:
                return w.getnframes(), w.getframerate()
        except (wave.Error, EOFError, ValueError) as err:
            raise BadSample(f"{what}: not a readable WAV file ({one_line(err) or type(err).__name__})")
    if ext == "flac":
        soundfile = _soundfile(name)
        try:
            info = soundfile.info(io.BytesIO(data))
        except Exception as err:  # libsndfile's errors
            raise BadSample(f"{what}: not a readable FLAC file ({one_line(err) or type(err).__name__})")
        return int(info.frames), int(info.samplerate)
    if ext == ARRAY_EXTENSION:
        shape = npy_shape(data, what)
        if len(shape) not in (1, 2) or shape[0] == 0:
            raise BadSample(f"{what}: audio array of shape {shape}, expected [samples] or [samples, channels]")
        return int(shape[0]), default_rate
    raise BadSample(f"{what}: {name} is not audio (.wav, .flac or .npy)")


def video_shape(data: bytes, what: str) -> tuple[int, int, int]:
    """(frames, width, height) of a .npy video."""
    shape = npy_shape(data, what)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)) or 0 in shape:
        raise BadSample(f"{what}: video array of shape {shape}, expected [frames, H, W, 3] or [frames, H, W]")
    return int(shape[0]), int(shape[2]), int(shape[1])


def _soundfile(name: str):
    try:
        import soundfile
    except ImportError:
        raise DataError(f"{name}: FLAC audio needs the soundfile package (pip install soundfile, or the "
                        f"aria-train[audio] extra)") from None
    return soundfile


# ---- decoding (materialising) ---------------------------------------------------------------------
def decode_audio(data: bytes, name: str, what: str, default_rate: int) -> tuple[torch.Tensor, int]:
    """-> (waveform float32 [samples, channels] in [-1, 1], sample rate)."""
    ext = extension(name)
    try:
        if ext == "wav":
            return _decode_wav(data)
        if ext == "flac":
            samples, rate = _soundfile(name).read(io.BytesIO(data), dtype="float32", always_2d=True)
            return torch.from_numpy(samples), int(rate)
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except DataError:
        raise
    except Exception as err:
        raise BadSample(f"{what}: decode failed: {one_line(err) or type(err).__name__}")
    if array.dtype == np.int16:
        array = array.astype(np.float32) / 32768.0
    array = np.asarray(array, dtype=np.float32)
    return torch.from_numpy(array.reshape(array.shape[0], -1).copy()), default_rate


def _decode_wav(data: bytes) -> tuple[torch.Tensor, int]:
    with wave.open(io.BytesIO(data)) as w:
        width, channels, rate, frames = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.getnframes()
        raw = w.readframes(frames)
    if len(raw) != frames * width * channels:
        raise BadSample(f"WAV data holds {len(raw)} bytes, its header says {frames * width * channels}")
    if width == 1:  # 8-bit WAV is unsigned
        values = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 3:  # 24-bit little endian, sign-extended through the top byte
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        values = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23
    elif width in (2, 4):
        values = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float32) / 2 ** (8 * width - 1)
    else:
        raise BadSample(f"WAV sample width {width} bytes is not supported")
    return torch.from_numpy(values.reshape(-1, channels).copy()), rate


def resample(waveform: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    """[samples, channels] at `rate` -> at `target` (linear interpolation; unchanged if equal)."""
    if rate == target or waveform.shape[0] == 0:
        return waveform
    length = max(1, round(waveform.shape[0] * target / rate))
    out = torch.nn.functional.interpolate(waveform.T.unsqueeze(0), size=length, mode="linear", align_corners=False)
    return out.squeeze(0).T.contiguous()


def audio_features(data: Optional[bytes], name: str, what: str, spec: AudioFeatureSpec, default_rate: int):
    """One audio member -> (patches [n, dim], grid (h, w)); data None = silence (a stand-in)."""
    if data is None:
        waveform = torch.zeros(spec.sample_rate, 1)
    else:
        waveform, rate = decode_audio(data, name, what, default_rate)
        waveform = resample(waveform, rate, spec.sample_rate)
    return spec.features(waveform)


def decode_video_array(data: bytes, what: str) -> list:
    """A .npy video -> list of [3, H, W] uint8 frames."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as err:
        raise BadSample(f"{what}: decode failed: {one_line(err) or type(err).__name__}")
    if array.ndim == 3:
        array = array[..., None]
    array = np.repeat(array, 3, axis=3) if array.shape[3] == 1 else array
    frames = torch.from_numpy(np.ascontiguousarray(array.astype(np.uint8))).permute(0, 3, 1, 2)
    return list(frames)


def clip_tensor(frames: list, settings: MediaSettings) -> torch.Tensor:
    """Frame crops [3, H, W] (same size) -> [F', 3, H, W]: at most max_frames, the last repeated
    to a multiple of tubelet_frames."""
    frames = frames[: settings.max_frames]
    f = settings.tubelet_frames
    frames = frames + [frames[-1]] * (-len(frames) % f)
    return torch.stack(frames)
