"""Test audio made on the spot (the tests' and the audio benchmark's): numpy signals and espeak-ng
speech, encoded with PyAV."""

import itertools
import math
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np

RATE = 48_000

# (container format, codec, extension) for every accepted upload format.
FORMATS = {
    "wav": ("wav", "pcm_s16le", "wav"),
    "flac": ("flac", "flac", "flac"),
    "mp3": ("mp3", "libmp3lame", "mp3"),
    "m4a": ("ipod", "aac", "m4a"),
    "opus": ("ogg", "libopus", "opus"),
    "webm": ("webm", "libopus", "webm"),
}


def tone(
    seconds: float = 10,
    dbfs: float = -18.0,
    channels: int = 2,
    freq: float = 997.0,
    rate: int = RATE,
) -> np.ndarray:
    """A sine peaking at `dbfs`: 997 Hz at -18 dBFS reads -18.0 LUFS in stereo (calibration)."""
    t = np.arange(int(rate * seconds)) / rate
    x = (10 ** (dbfs / 20)) * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1)


def program(seconds: float = 12, rate: int = RATE, seed: int = 1) -> np.ndarray:
    """Dynamic material: quiet tone, loud tone, noise, a silence."""
    rng = np.random.default_rng(seed)
    part = int(seconds / 4 * rate)
    left = np.concatenate(
        [
            tone(seconds / 4, -32, 1, 440, rate)[:, 0],
            tone(seconds / 4, -6, 1, 1500, rate)[:, 0],
            rng.normal(0, 0.08, part),
            np.zeros(part),
        ]
    )
    return np.stack([left, left * 0.7], axis=1)


# Spoken material for speech() (the audio benchmark's and the processing tests').
SPEECH_TEXTS = (
    "Welcome back to the show. Today we talk about loudness, and why every episode should sit "
    "at the same level, so that nobody has to reach for the volume knob between two programmes.",
    "Loudness is measured in LUFS, loudness units relative to full scale. The integrated value "
    "is gated, so long pauses and quiet passages do not drag the average down.",
    "The true peak is the highest level of the signal between the samples. A lossy encoder can "
    "raise it, which is why a ceiling of minus one decibel leaves room for the codec.",
    "Short questions. Long answers that wander a little before they come to the point. Then a "
    "laugh, a pause, and a very quiet aside that the microphone almost missed.",
)


def speech(text: str, dest: Path) -> Path:
    """espeak-ng speech as WAV (mono 22.05 kHz)."""
    binary = shutil.which("espeak-ng")
    assert binary, "espeak-ng is missing: `make test` installs it (Debian package espeak-ng)"
    subprocess.run([binary, "-w", str(dest), text], check=True, capture_output=True)
    return dest


def write(
    dest: Path,
    samples: np.ndarray,
    kind: str = "wav",
    rate: int = RATE,
    metadata: dict[str, str] | None = None,
) -> Path:
    fmt, codec, _ = FORMATS[kind]
    channels = samples.shape[1]
    layout = {1: "mono", 2: "stereo"}[channels]
    out_rate = 48_000 if codec == "libopus" else rate
    with av.open(str(dest), "w", format=fmt) as container:
        for key, value in (metadata or {}).items():
            container.metadata[key] = value
        stream = container.add_stream(codec, rate=out_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.astype(np.float32)).reshape(1, -1),
            format="flt",
            layout=layout,
        )
        frame.sample_rate = rate
        target = stream.codec_context.format.name if stream.codec_context.format else "s16"
        resampler = av.AudioResampler(format=target, layout=layout, rate=out_rate)
        for chunk in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(chunk):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return dest


def long_program(seconds: float, block_s: float = 12.0) -> np.ndarray:
    """program() blocks, each with noise of its own (seeds 1, 2, ...), cut to `seconds`."""
    blocks = [program(block_s, seed=seed) for seed in range(1, math.ceil(seconds / block_s) + 1)]
    return np.concatenate(blocks)[: int(seconds * RATE)]


def long_speech(seconds: float, workdir: Path, pause_s: float = 0.4) -> tuple[np.ndarray, int]:
    """The SPEECH_TEXTS spoken in turn with short pauses, until at least `seconds` long: the
    samples (mono) and their rate (espeak-ng's)."""
    clips = []
    for index, text in enumerate(SPEECH_TEXTS):
        with av.open(str(speech(text, workdir / f"speech-{index}.wav"))) as wav:
            rate, frames = wav.streams.audio[0].rate, wav.decode(audio=0)
            clips.append(np.concatenate([f.to_ndarray().reshape(-1, 1) for f in frames]) / 32768)
    parts, pause, turns = [], np.zeros((int(pause_s * rate), 1)), itertools.cycle(clips)
    while sum(map(len, parts)) < seconds * rate:
        parts += [next(turns), pause]
    return np.concatenate(parts), rate
