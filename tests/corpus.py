"""Hostile and broken uploads, made on the spot. Each maps to the outcome it must have."""

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from testing import signals


def wav_header(rate: int, channels: int, data_bytes: int, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def zero_bytes(d: Path) -> Path:
    (d / "empty.wav").write_bytes(b"")
    return d / "empty.wav"


def text_as_mp3(d: Path) -> Path:
    (d / "notes.mp3").write_text("Just some text, renamed to .mp3.\n" * 50)
    return d / "notes.mp3"


def truncated_wav(d: Path) -> Path:
    full = signals.write(d / "full.wav", signals.tone(10)).read_bytes()
    (d / "truncated.wav").write_bytes(full[: len(full) // 5])
    return d / "truncated.wav"


def truncated_mp3(d: Path) -> Path:
    full = signals.write(d / "full.mp3", signals.tone(20), "mp3").read_bytes()
    (d / "truncated.mp3").write_bytes(full[: len(full) // 2])
    return d / "truncated.mp3"


def header_claims_hours(d: Path) -> Path:
    pcm = (signals.tone(1)[:, :2] * 32767).astype("<i2").tobytes()
    (d / "liar.wav").write_bytes(wav_header(48_000, 2, 48_000 * 4 * 3600 * 5) + pcm)
    return d / "liar.wav"


def flac_10h_silence(d: Path) -> Path:
    """A tiny FLAC whose STREAMINFO says 10 hours (a decompression bomb)."""
    path = signals.write(d / "silence.flac", np.zeros((48_000, 1)), "flac")
    data = bytearray(path.read_bytes())
    # STREAMINFO starts at 8; bytes 18..25 hold rate(20) channels-1(3) bps-1(5) total(36).
    total = 48_000 * 3600 * 10
    packed = int.from_bytes(data[18:26], "big")
    packed = (packed & ~((1 << 36) - 1)) | total
    data[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(data))
    return path


def wav_rate_1(d: Path) -> Path:
    pcm = np.zeros(48_000 * 2, dtype="<i2").tobytes()
    (d / "rate1.wav").write_bytes(wav_header(1, 1, len(pcm)) + pcm)
    return d / "rate1.wav"


def ffconcat_as_wav(d: Path) -> Path:
    (d / "concat.wav").write_text("ffconcat version 1.0\nfile '/etc/passwd'\n")
    return d / "concat.wav"


def hls_as_mp3(d: Path) -> Path:
    (d / "playlist.mp3").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/hostname\n"
    )
    return d / "playlist.mp3"


def nan_samples(d: Path) -> Path:
    samples = signals.tone(2, -18, 1)
    samples[1000:2000] = np.nan
    path = d / "nan.wav"
    import av

    with av.open(str(path), "w", format="wav") as container:
        stream = container.add_stream("pcm_f32le", rate=48_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            samples.astype(np.float32).reshape(1, -1), format="flt", layout="mono"
        )
        frame.sample_rate = 48_000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def silence(d: Path) -> Path:
    return signals.write(d / "silence.wav", np.zeros((48_000 * 3, 2)))


def hostile_tags(d: Path) -> Path:
    tags = {"title": "<img src=x onerror=alert(1)>\u202e\x00\r\nX", "artist": "A" * 2_000_000}
    return signals.write(d / "tags.flac", signals.tone(2), "flac", metadata=tags)


def wav_12_channels(d: Path) -> Path:
    pcm = np.zeros(48_000 * 12, dtype="<i2").tobytes()
    (d / "surround.wav").write_bytes(wav_header(48_000, 12, len(pcm)) + pcm)
    return d / "surround.wav"


def wav_384_khz(d: Path) -> Path:
    pcm = (signals.tone(1, rate=384_000)[:, :1] * 32767).astype("<i2").tobytes()
    (d / "ultrasonic.wav").write_bytes(wav_header(384_000, 1, len(pcm)) + pcm)
    return d / "ultrasonic.wav"


def tags_are_clean(job: dict) -> str:
    """What is wrong with the stored tags of `hostile_tags` ("" when nothing)."""
    tags = job["source_metadata"]["tags"]
    if any(ch in tags["title"] for ch in "\u202e\x00\r\n"):
        return f"control characters kept: {tags['title']!r}"
    if not tags["title"].startswith("<img"):
        return f"title not kept as text: {tags['title']!r}"
    if not 0 < len(tags["artist"]) <= 200:
        return f"artist not truncated: {len(tags['artist'])} characters"
    return ""


# name -> (maker, expected outcome, words the reason must contain: in the 400's detail, the
# failed job's error, or a done job's rendition notes; or a check of the done job that returns
# what is wrong)
CORPUS: dict[str, tuple[Callable[[Path], Path], str, str | Callable[[dict], str]]] = {
    "zero bytes": (zero_bytes, "400", "empty"),
    "text renamed .mp3": (text_as_mp3, "400", "not a supported audio format"),
    "truncated WAV": (truncated_wav, "400", "truncated"),
    "truncated MP3": (truncated_mp3, "failed", "truncated"),
    "WAV header claiming hours": (header_claims_hours, "400", "header is wrong"),
    "tiny FLAC of 10 h silence": (flac_10h_silence, "400", "longer than"),
    "WAV with sample_rate=1": (wav_rate_1, "400", "sample rate 1 Hz"),
    "ffconcat script as WAV": (ffconcat_as_wav, "400", "not a supported audio format"),
    "HLS playlist as MP3": (hls_as_mp3, "400", "not a supported audio format"),
    "NaN samples": (nan_samples, "failed", "NaN"),
    "WAV with 12 channels": (wav_12_channels, "400", "12 channels is outside 1-8"),
    "WAV at 384 kHz": (wav_384_khz, "400", "sample rate 384000 Hz is outside"),
    "silence": (silence, "done", "silent"),
    "hostile tags": (hostile_tags, "done", tags_are_clean),
}


def problem(case: str, job: dict) -> str:
    """What is wrong with a processed job of this case ("" when nothing)."""
    _, outcome, reason = CORPUS[case]
    if job["status"] != outcome:
        return f"status {job['status']!r}, expected {outcome!r} (error: {job['error']!r})"
    if callable(reason):
        return reason(job)
    text = job["error"] if outcome == "failed" else " ".join(r["note"] for r in job["renditions"])
    return "" if reason in text else f"{reason!r} not in {text!r}"
