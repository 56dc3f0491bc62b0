"""Decoding untrusted audio safely, and everything measured in one streaming pass.

PyAV (FFmpeg) opens the file with a demuxer whitelist (an `ffconcat` script or an HLS playlist
disguised as audio must not make FFmpeg read other files), then decodes it frame by frame:
real samples are counted (headers lie), caps are enforced while decoding (decompression bombs),
and loudness (BS.1770 via libebur128) and waveform peaks are computed on the way.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import av
import numpy as np
import pyebur128

# FFmpeg demuxer names accepted: WAV, FLAC, MP3, AAC (ADTS) and M4A (mov), Ogg (Vorbis/Opus/FLAC),
# WebM/Matroska audio.
ALLOWED_DEMUXERS = {"wav", "flac", "mp3", "aac", "mov,mp4,m4a,3gp,3g2,mj2", "ogg", "matroska,webm"}
FORMAT_WHITELIST = "wav,flac,mp3,aac,mov,ogg,matroska"
ALLOWED_CODECS = {
    "pcm_s16le",
    "pcm_s24le",
    "pcm_s32le",
    "pcm_f32le",
    "pcm_f64le",
    "pcm_u8",
    "pcm_s16be",
    "flac",
    "mp3",
    "mp3float",
    "aac",
    "alac",
    "opus",
    "vorbis",
}
SILENCE_LUFS = -70.0
TRUNCATION_RATIO = 0.9  # decoded duration below this share of the header's claim: refuse
WAVEFORM_PIXELS_PER_SECOND = 20
TAG_MAX_CHARS = 200
TAG_NAMES = ("title", "artist", "album", "date", "genre", "comment", "track")


class InvalidAudio(ValueError):
    """The upload is not audio this service accepts; the message is for the user."""


@dataclass(frozen=True)
class Limits:
    max_duration_s: float = 3 * 3600
    max_sample_rate: int = 192_000
    min_sample_rate: int = 8_000
    max_channels: int = 8
    # Each encoder process: address space, CPU seconds, and the largest file it may write.
    encoder_memory_bytes: int = 1024 * 2**20
    encoder_cpu_s: int = 600
    max_output_bytes: int = 2048 * 2**20


@dataclass
class Loudness:
    integrated_lufs: float | None  # None: silence (below the gate), nothing to normalise
    true_peak_dbtp: float | None
    lra_lu: float | None

    def as_dict(self) -> dict[str, float | None]:
        return {
            "integrated_lufs": _round(self.integrated_lufs),
            "true_peak_dbtp": _round(self.true_peak_dbtp),
            "lra_lu": _round(self.lra_lu),
        }


@dataclass
class Waveform:
    sample_rate: int
    samples_per_pixel: int
    data: list[int] = field(default_factory=list)  # min0, max0, min1, max1, ... (8-bit)

    def as_audiowaveform_json(self) -> dict[str, object]:
        return {
            "version": 2,
            "channels": 1,
            "sample_rate": self.sample_rate,
            "samples_per_pixel": self.samples_per_pixel,
            "bits": 8,
            "length": len(self.data) // 2,
            "data": self.data,
        }

    def as_audiowaveform_dat(self) -> bytes:
        header = np.array(
            [2, 1, self.sample_rate, self.samples_per_pixel, len(self.data) // 2, 1], dtype="<i4"
        )
        return header.tobytes() + np.asarray(self.data, dtype=np.int8).tobytes()


@dataclass
class Analysis:
    demuxer: str
    codec: str
    sample_rate: int
    channels: int
    bitrate: int | None
    duration_s: float
    samples: int
    tags: dict[str, str]
    loudness: Loudness
    waveform: Waveform | None = None

    def source_metadata(self) -> dict[str, object]:
        return {
            "format": self.demuxer.split(",")[0],
            "codec": self.codec,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "bitrate": self.bitrate,
            "duration_s": round(self.duration_s, 3),
            "tags": self.tags,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _db(linear: float) -> float | None:
    return 20 * math.log10(linear) if linear > 0 else None


def sanitize_tag(value: object) -> str:
    """Printable text only: no control, format (bidi) or private-use characters; bounded."""
    text = str(value)[: TAG_MAX_CHARS * 4]
    kept = "".join(
        " " if ch in "\r\n\t" else ch
        for ch in text
        if ch in "\r\n\t" or unicodedata.category(ch)[0] not in {"C"}
    )
    return " ".join(kept.split())[:TAG_MAX_CHARS]


def open_container(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path), options={"format_whitelist": FORMAT_WHITELIST})
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidAudio("the file is not a supported audio format") from exc
    if container.format.name not in ALLOWED_DEMUXERS:
        container.close()
        raise InvalidAudio(f"unsupported container format ({container.format.name})")
    return container


@dataclass(frozen=True)
class Header:
    """What the container claims, checked against the limits before anything is decoded."""

    demuxer: str
    codec: str
    sample_rate: int
    channels: int
    duration_hint_s: float | None


def inspect(path: Path, limits: Limits = Limits()) -> Header:
    """Cheap header check (used on upload): whitelisted format, an audio stream, sane claims."""
    with open_container(path) as container:
        stream = _audio_stream(container)
        header = Header(
            demuxer=container.format.name,
            codec=stream.codec_context.name,
            sample_rate=stream.codec_context.sample_rate,
            channels=stream.codec_context.channels,
            duration_hint_s=_duration_hint(container, stream),
        )
    _check_format(header.sample_rate, header.channels, limits)
    if header.demuxer == "wav":
        _check_wav_size(path)
    if header.duration_hint_s and header.duration_hint_s > limits.max_duration_s:
        minutes = limits.max_duration_s / 60
        raise InvalidAudio(f"the audio is longer than {minutes:.0f} minutes")
    return header


def _check_wav_size(path: Path) -> None:
    """FFmpeg trusts the file size over a WAV's data chunk: check that they agree."""
    with path.open("rb") as f:
        head = f.read(65_536)
    at = head.find(b"data", 12)
    if at < 0 or at + 8 > len(head):
        return
    claimed = int.from_bytes(head[at + 4 : at + 8], "little")
    present = path.stat().st_size - (at + 8)
    if claimed in (0, 0xFFFFFFFF) or claimed <= present:
        return  # unknown size (streamed WAV), or complete
    raise InvalidAudio(
        f"the file is truncated or its header is wrong: it declares {claimed:,} bytes of audio "
        f"but holds {present:,}"
    )


def _audio_stream(container: av.container.InputContainer) -> av.audio.stream.AudioStream:
    streams = [s for s in container.streams if s.type == "audio"]
    if not streams:
        raise InvalidAudio("the file has no audio stream")
    stream = streams[0]
    if stream.codec_context.name not in ALLOWED_CODECS:
        raise InvalidAudio(f"unsupported audio codec ({stream.codec_context.name})")
    return cast(av.audio.stream.AudioStream, stream)  # the type checked above


def _duration_hint(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return float(container.duration / 1e6) if container.duration else None


def analyse(
    path: Path,
    limits: Limits = Limits(),
    *,
    waveform: bool = True,
    progress: Callable[[float], None] | None = None,
) -> Analysis:
    """Decode the whole file once (streaming) and measure it. Raises InvalidAudio."""
    container = open_container(path)
    with container:
        stream = _audio_stream(container)
        codec = stream.codec_context.name
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        _check_format(rate, channels, limits)
        hinted = _duration_hint(container, stream)
        tags = {
            name: sanitize_tag(value)
            for name, value in {**container.metadata, **stream.metadata}.items()
            if name.lower() in TAG_NAMES and str(value).strip()
        }
        meter = pyebur128.R128State(
            channels,
            rate,
            pyebur128.MeasurementMode.MODE_I
            | pyebur128.MeasurementMode.MODE_LRA
            | pyebur128.MeasurementMode.MODE_TRUE_PEAK,
        )
        resampler = av.AudioResampler(format="flt", layout=_layout(channels), rate=rate)
        peaks = _PeakCollector(rate) if waveform else None
        samples = 0
        max_samples = int(limits.max_duration_s * rate)
        try:
            for packet_frame in container.decode(stream):
                if (
                    packet_frame.sample_rate != rate
                    or len(packet_frame.layout.channels) != channels
                ):
                    raise InvalidAudio("the audio changes sample rate or channels midway")
                for block, count in _float_blocks(packet_frame, channels, resampler):
                    if not np.isfinite(block).all():
                        raise InvalidAudio("the audio contains invalid (NaN or infinite) samples")
                    samples += count
                    if samples > max_samples:
                        minutes = limits.max_duration_s / 60
                        raise InvalidAudio(f"the audio is longer than {minutes:.0f} minutes")
                    meter.add_frames(block, count)
                    if peaks is not None:
                        peaks.add(block.reshape(count, channels))
                if progress and hinted:
                    progress(min(samples / rate / hinted, 1.0))
        except av.FFmpegError as exc:
            raise InvalidAudio(
                "the audio could not be decoded (damaged or truncated file)"
            ) from exc
        if samples == 0:
            raise InvalidAudio("the file contains no audio samples")
        decoded_s = samples / rate
        if hinted and hinted > 2.0 and decoded_s < hinted * TRUNCATION_RATIO:
            raise InvalidAudio(
                f"the file is truncated or its header is wrong: it claims {hinted:.0f} s "
                f"but only {decoded_s:.1f} s of audio could be decoded"
            )
        loudness = _loudness(meter, channels)
        bitrate = stream.bit_rate or container.bit_rate
    return Analysis(
        demuxer=container.format.name,
        codec=codec,
        sample_rate=rate,
        channels=channels,
        bitrate=int(bitrate) if bitrate else None,
        duration_s=samples / rate,
        samples=samples,
        tags=tags,
        loudness=loudness,
        waveform=peaks.finish() if peaks is not None else None,
    )


def _float_blocks(
    frame: av.AudioFrame, channels: int, resampler: av.AudioResampler
) -> Iterator[tuple[np.ndarray, int]]:
    """The frame's samples as packed float32 and their count per channel. A float frame that is
    already packed (or mono, where planar is the same) is read in place: most lossy decoders
    give float, and a resampler's copy of every frame was a fifth of measuring a rendition."""
    if frame.format.name == "flt" or (frame.format.name == "fltp" and channels == 1):
        count = frame.samples
        yield np.frombuffer(frame.planes[0], np.float32, count * channels), count
        return
    for converted in resampler.resample(frame):
        yield converted.to_ndarray().reshape(-1), converted.samples


def _check_format(rate: int, channels: int, limits: Limits) -> None:
    if not limits.min_sample_rate <= rate <= limits.max_sample_rate:
        raise InvalidAudio(
            f"sample rate {rate} Hz is outside {limits.min_sample_rate}-{limits.max_sample_rate} Hz"
        )
    if not 1 <= channels <= limits.max_channels:
        raise InvalidAudio(f"{channels} channels is outside 1-{limits.max_channels}")


def _layout(channels: int) -> str:
    # A WAV without a channel mask has an unnamed layout; name it from the count.
    return {1: "mono", 2: "stereo"}.get(channels, f"{channels}c")


def _loudness(meter: pyebur128.R128State, channels: int) -> Loudness:
    integrated = pyebur128.get_loudness_global(meter)
    true_peak = max(pyebur128.get_true_peak(meter, ch) for ch in range(channels))
    lra = pyebur128.get_loudness_range(meter)
    silent = not math.isfinite(integrated) or integrated <= SILENCE_LUFS
    return Loudness(
        integrated_lufs=None if silent else integrated,
        true_peak_dbtp=_db(true_peak),
        lra_lu=None if silent or not math.isfinite(lra) else lra,
    )


class _PeakCollector:
    """audiowaveform-compatible min/max of the int16 mono mix per block of samples."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.spp = max(rate // WAVEFORM_PIXELS_PER_SECOND, 1)
        self.carry = np.empty(0, dtype=np.int32)
        self.data: list[int] = []

    def add(self, block: np.ndarray) -> None:
        ints = np.clip(np.round(block * 32767), -32768, 32767).astype(np.int32)
        mono = ints.sum(axis=1) // ints.shape[1]
        buf = np.concatenate([self.carry, mono])
        whole = len(buf) // self.spp * self.spp
        self._emit(buf[:whole])
        self.carry = buf[whole:]

    def _emit(self, buf: np.ndarray) -> None:
        if not len(buf):
            return
        blocks = buf.reshape(-1, self.spp)
        mins = np.trunc(blocks.min(axis=1) / 256).astype(np.int32)
        maxs = np.trunc(blocks.max(axis=1) / 256).astype(np.int32)
        pairs = np.empty(len(blocks) * 2, dtype=np.int32)
        pairs[0::2], pairs[1::2] = mins, maxs
        self.data.extend(pairs.tolist())

    def finish(self) -> Waveform:
        if len(self.carry):
            tail = self.carry
            self.carry = np.empty(0, dtype=np.int32)
            mins, maxs = int(np.trunc(tail.min() / 256)), int(np.trunc(tail.max() / 256))
            self.data.extend([mins, maxs])
        return Waveform(self.rate, self.spp, self.data)
