"""Renditions: gain to the preset's loudness with a limiter for the true-peak ceiling, encoded in
a child process by PyAV's FFmpeg (transcode.py: the filters and encoders the ffmpeg CLI runs, at
its speed), each verified by measuring the file made."""

from __future__ import annotations

import ctypes
import errno
import functools
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import av
import pyebur128

from . import transcode
from .media import SILENCE_LUFS, Analysis, InvalidAudio, Limits, Loudness, analyse

LOUDNESS_TOLERANCE_LU = 1.0
MAX_ATTEMPTS = 4
SETTLE_LU = 0.5  # stop correcting once this close to the target (the promise is ±1 LU)
SEARCH_LU = 0.2  # the gain search on raw PCM stops this close to the target
SEARCH_STEPS = 3
# The search measures an excerpt: the first EXCERPT_CHUNK_S of every EXCERPT_PERIOD_S (a quarter,
# spread over the whole file), at most EXCERPT_MAX_S in all (longer files: a longer period); a
# file shorter than two periods whole. Decoded once per job and kept in memory.
EXCERPT_CHUNK_S, EXCERPT_PERIOD_S, EXCERPT_MAX_S = 2.0, 8.0, 30.0
# ... unless its loudness (before the limiter) is this far from the whole file's: then the
# whole file, decoded for each measure.
EXCERPT_MAX_OFFSET_LU = 0.5
# The limiter runs at this multiple of the output rate where it acts (a true-peak limiter: a
# sample-peak limiter at 22.05 kHz let inter-sample peaks 1-3 dB over its level).
OVERSAMPLE = 4
# How far under the ceiling the limiter is set, per encoder: what the encoder adds to the true
# peak of limited audio (measured on the benchmark's speech with the oversampled limiter: Opus
# 96k up to +1.1 dB, AAC 160k +0.2-0.55, LAME V2 +0.1-0.26, FLAC none).
HEADROOM_DB = {"libopus": 1.5, "aac": 1.0}
DEFAULT_HEADROOM_DB = 0.5
ENCODE_TIMEOUT_S = 1800
STOP_CHECK_S = 0.5
TRANSCODER = Path(__file__).with_name("transcode.py")
# A program run in the transcoder's place with the same arguments (tests: a hung encoder).
ENCODER_EXE_ENV = "AUDIO_ENCODER_EXE"


class Stopped(Exception):
    """The caller's `stop()` said so: the encoder was killed and its output removed."""


@dataclass(frozen=True)
class Format:
    name: str
    extension: str
    content_type: str
    codec: str
    muxer: str
    rate: int | None = None  # None: the source's
    options: tuple[tuple[str, str], ...] = ()  # the encoder's (AVCodecContext) options
    muxer_options: tuple[tuple[str, str], ...] = ()
    max_channels: int | None = None  # more are downmixed (the encoder takes no more)

    def transcoder_args(self) -> list[str]:
        args = ["--codec", self.codec, "--muxer", self.muxer]
        if self.rate:
            args += ["--rate", str(self.rate)]
        if self.max_channels:
            args += ["--max-channels", str(self.max_channels)]
        args += [f"--option={key}={value}" for key, value in self.options]
        return args + [f"--muxer-option={key}={value}" for key, value in self.muxer_options]

    @property
    def codec_args(self) -> tuple[str, ...]:
        """The same encode as ffmpeg CLI arguments (the benchmark's reference runs)."""
        args = ["-c:a", self.codec]
        for key, value in (*self.options, *self.muxer_options):
            args += [f"-{key}", value]
        if self.rate:
            args += ["-ar", str(self.rate)]
        return (*args, "-f", self.muxer)


FORMATS = {
    # VBR (-q:a 2): LAME's CBR/ABR at <= 160 kbps scales input by 0.95 (-0.45 dB).
    "mp3": Format(
        "mp3",
        "mp3",
        "audio/mpeg",
        "libmp3lame",
        "mp3",
        44100,
        (("flags", "+qscale"), ("global_quality", str(2 * 118))),
        max_channels=2,
    ),
    "aac": Format(
        "aac",
        "m4a",
        "audio/mp4",
        "aac",
        "ipod",
        48000,
        (("b", "160k"),),
        (("movflags", "+faststart"),),
    ),
    "opus": Format("opus", "opus", "audio/ogg", "libopus", "ogg", 48000, (("b", "96k"),)),
    # A fixed block size: from an MP3 input FFmpeg picks ~47-sample frames (10x slower, 2x bigger).
    "flac": Format("flac", "flac", "audio/flac", "flac", "flac", None, (("frame_size", "4608"),)),
}


@dataclass
class Rendition:
    format: Format
    path: Path
    loudness: Loudness
    gain_db: float
    within_target: bool
    note: str
    # How render() got there: its encode + measure passes (retries included), and the limiter's
    # level and oversampling in the encode delivered (with gain_db, what repeats that encode).
    encodes: int
    limit_dbfs: float
    oversample: int


def demuxer_name(analysis: Analysis) -> str:
    return analysis.demuxer.split(",")[0]


def plan_gain(source: Loudness, target_lufs: float) -> float | None:
    """Gain to reach the target, or None when there is nothing to normalise (silence)."""
    if source.integrated_lufs is None:
        return None
    return target_lufs - source.integrated_lufs


def render(
    source: Path,
    analysis: Analysis,
    fmt: Format,
    dest: Path,
    *,
    target_lufs: float,
    ceiling_dbtp: float,
    limits: Limits,
    stop: Callable[[], bool] = lambda: False,
) -> Rendition:
    """`stop` is asked twice a second while an encoder runs: true kills it (raises Stopped)."""
    gain = plan_gain(analysis.loudness, target_lufs)
    if gain is None:
        _encode(
            source,
            demuxer_name(analysis),
            dest,
            fmt,
            gain_db=0.0,
            limit_dbfs=ceiling_dbtp,
            limits=limits,
            stop=stop,
        )
        measured = analyse(dest, limits, waveform=False).loudness
        note = "silent: nothing to normalise"
        return Rendition(fmt, dest, measured, 0.0, False, note, 1, ceiling_dbtp, 1)
    limit = ceiling_dbtp - HEADROOM_DB.get(fmt.codec, DEFAULT_HEADROOM_DB)
    gain = limited_gain(source, analysis, gain, limit, target_lufs, stop)
    attempts: list[tuple[Path, Loudness, float, float, int]] = []
    made: list[Path] = []
    try:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            path = dest.with_name(f"{dest.stem}.try{attempt}{dest.suffix}")
            made.append(path)
            oversample = OVERSAMPLE if limiting(analysis, gain, limit) else 1
            _encode(
                source,
                demuxer_name(analysis),
                path,
                fmt,
                gain_db=gain,
                limit_dbfs=limit,
                limits=limits,
                stop=stop,
                oversample=oversample,
            )
            measured = analyse(path, limits, waveform=False).loudness
            attempts.append((path, measured, gain, limit, oversample))
            if measured.integrated_lufs is None:
                break
            error = target_lufs - measured.integrated_lufs
            overshoot = (measured.true_peak_dbtp or -math.inf) - ceiling_dbtp
            if abs(error) <= SETTLE_LU and overshoot <= 0:
                break
            # Lossy encoders and the limiter's sample-peak view push true peaks up: the ceiling
            # comes first (more gain would push them further). Then loud limiting pulls loudness
            # down: add the missing gain.
            if overshoot > 0:
                # A lower limit takes loudness away: find the gain for it on PCM again.
                limit -= overshoot + 0.3
                gain = limited_gain(source, analysis, gain, limit, target_lufs, stop)
            elif abs(error) > SETTLE_LU:
                gain += error
    except BaseException:  # no attempt file outlives a failure (a limit, a bad file, a timeout)
        for path in made:
            path.unlink(missing_ok=True)
        raise
    # Deliver the attempt that keeps both promises and is closest to the target; failing
    # that, the one nearest to keeping them.
    path, measured, gain, limit, oversample = min(
        attempts, key=lambda a: _miss(a[1], target_lufs, ceiling_dbtp)
    )
    path.replace(dest)
    for other, *_ in attempts:
        other.unlink(missing_ok=True)
    loud_ok = (
        measured.integrated_lufs is not None
        and abs(measured.integrated_lufs - target_lufs) <= LOUDNESS_TOLERANCE_LU
    )
    peak_ok = measured.true_peak_dbtp is None or measured.true_peak_dbtp <= ceiling_dbtp
    note = ""
    if not loud_ok:
        note = (
            f"loudness {measured.integrated_lufs:.1f} LUFS misses the {target_lufs:.0f} LUFS "
            "target: the audio is too dynamic to reach it under the true-peak ceiling"
            if measured.integrated_lufs is not None
            else "the rendition is silent"
        )
    elif not peak_ok:
        note = (
            f"true peak {measured.true_peak_dbtp:.1f} dBTP is above the "
            f"{ceiling_dbtp:.0f} dBTP ceiling"
        )
    kept = loud_ok and peak_ok
    return Rendition(fmt, dest, measured, gain, kept, note, len(attempts), limit, oversample)


def limiting(analysis: Analysis, gain_db: float, limit_dbfs: float) -> bool:
    """Whether the gain lifts the source's true peak over the limiter's level."""
    peak = analysis.loudness.true_peak_dbtp
    return peak is not None and peak + gain_db > limit_dbfs


def limited_gain(
    source: Path,
    analysis: Analysis,
    gain_db: float,
    limit_dbfs: float,
    target_lufs: float,
    stop: Callable[[], bool] = lambda: False,
) -> float:
    """The gain that brings the source to the target *after* the limiter.

    Where the gain lifts peaks into the limiter (speech raised by 10 dB), limiting takes loudness
    away, and each correction used to cost an encode and a measure of the rendition. Here the
    corrections are made on raw PCM out of the same filters (no codec, integrated loudness
    only) on an excerpt of the source kept in memory (decoded once), a fraction of that cost;
    the encode then usually lands on the first try, and its measure catches an excerpt that
    misjudged the whole. Material the limiter leaves alone (its true peak stays under the limit)
    needs no search.
    """
    if not limiting(analysis, gain_db, limit_dbfs):
        return gain_db
    # Formats with the same limit start from the same gain: search once per limit; a search at
    # another limit starts from the last one's result and slope.
    search = _search_for(source, analysis, gain_db, target_lufs, limit_dbfs, stop)
    if (found := search.found.get(limit_dbfs)) is not None:
        return found
    previous: tuple[float, float] | None = None
    slope = 1.0
    if search.last is not None:
        last_limit, last_gain, slope = search.last
        gain_db = last_gain + (last_limit - limit_dbfs)
    for _ in range(SEARCH_STEPS):
        measured = search.loudness(gain_db, limit_dbfs, stop)
        if measured is None or abs(target_lufs - measured) <= SEARCH_LU:
            break
        # Under the limiter a dB of gain buys less than a dB of loudness: step by the slope
        # seen so far (secant), 1 (or the last search's) before there is one.
        if previous is not None and gain_db != previous[0]:
            slope = min(max((measured - previous[1]) / (gain_db - previous[0]), 0.2), 1.0)
        previous = (gain_db, measured)
        gain_db += (target_lufs - measured) / slope
    search.found[limit_dbfs] = gain_db
    search.last = (limit_dbfs, gain_db, slope)
    return gain_db


@dataclass
class _Search:
    """One job's gain searches (a worker process renders one job at a time): what they measure,
    and the gain found per limiter level."""

    job: tuple
    source: Path
    demuxer: str
    # An excerpt of the source, in memory; None: the whole file, decoded for each measure.
    frames: list[av.AudioFrame] | None
    # The whole file's loudness minus the excerpt's, both before the limiter: added to the
    # excerpt's limited loudness, it estimates the whole file's (the limiter's loss measured on
    # the excerpt).
    offset_lu: float = 0.0
    found: dict[float, float] = field(default_factory=dict)
    last: tuple[float, float, float] | None = None  # limit, gain, slope

    def loudness(self, gain_db: float, limit_dbfs: float, stop: Callable[[], bool]) -> float | None:
        frames: Iterable[av.AudioFrame] = self.frames or transcode.decoded(
            str(self.source), self.demuxer
        )
        measured = _pcm_loudness(frames, gain_db, limit_dbfs, stop)
        return None if measured is None else measured + self.offset_lu


_search: _Search | None = None


def _search_for(
    source: Path,
    analysis: Analysis,
    gain_db: float,
    target_lufs: float,
    limit_dbfs: float,
    stop: Callable[[], bool],
) -> _Search:
    """This job's search state: its excerpt decoded and weighed on first use."""
    global _search
    job = (str(source), source.stat().st_mtime_ns, round(gain_db, 3), target_lufs)
    if _search is not None and _search.job == job:
        return _search
    _search = None  # one job at a time per worker process: free the last one's frames
    demuxer, rate = demuxer_name(analysis), analysis.sample_rate
    whole = _Search(job, source, demuxer, None)
    if analysis.duration_s < 2 * EXCERPT_PERIOD_S or analysis.loudness.integrated_lufs is None:
        # Short: the whole file, in memory (every frame starts within the first sample of 1).
        whole.frames = _excerpt(source, demuxer, 1, 1)
        _search = whole
        return whole
    period = max(EXCERPT_PERIOD_S, analysis.duration_s * EXCERPT_CHUNK_S / EXCERPT_MAX_S)
    frames = _excerpt(source, demuxer, int(EXCERPT_CHUNK_S * rate), int(period * rate))
    # Its loudness before the limiter: at a gain that keeps the true peak 1 dB under the
    # limiter's level, where the limiter is idle.
    quiet = limit_dbfs - (analysis.loudness.true_peak_dbtp or 0.0) - 1.0
    measured = _pcm_loudness(frames, quiet, limit_dbfs, stop)
    offset = None if measured is None else analysis.loudness.integrated_lufs - (measured - quiet)
    # An excerpt much louder or quieter than the whole would misjudge the limiter's loss (it
    # acts more on louder audio): then the whole file is measured instead.
    if offset is None or abs(offset) > EXCERPT_MAX_OFFSET_LU:
        _search = whole
    else:
        _search = _Search(job, source, demuxer, frames, offset)
    return _search


def _excerpt(source: Path, demuxer: str, chunk: int, period: int) -> list[av.AudioFrame]:
    try:
        return transcode.excerpt(str(source), demuxer, chunk, period)
    except av.FFmpegError as exc:
        raise InvalidAudio(f"decoding the audio for the gain search failed: {exc}") from exc


def _miss(loudness: Loudness, target_lufs: float, ceiling_dbtp: float) -> tuple[float, float]:
    """How far a rendition is from its promises: (broken promises, distance to the target)."""
    if loudness.integrated_lufs is None:
        return (math.inf, math.inf)
    error = abs(loudness.integrated_lufs - target_lufs)
    overshoot = max((loudness.true_peak_dbtp or -math.inf) - ceiling_dbtp, 0.0)
    broken = max(error - LOUDNESS_TOLERANCE_LU, 0.0) + overshoot
    return (broken, error)


def _encode(
    source: Path,
    demuxer: str,
    dest: Path,
    fmt: Format,
    *,
    gain_db: float,
    limit_dbfs: float,
    limits: Limits,
    stop: Callable[[], bool] = lambda: False,
    oversample: int = 1,
) -> None:
    command = _command(source, demuxer, str(dest), fmt, gain_db, limit_dbfs, oversample)
    cpu_before = _children_cpu_s()
    deadline = time.monotonic() + ENCODE_TIMEOUT_S
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=functools.partial(_confine, limits),  # only setrlimit/prctl after fork
    )
    try:
        while True:
            try:
                _, stderr = process.communicate(timeout=STOP_CHECK_S)
                break
            except subprocess.TimeoutExpired:
                if stop():
                    raise Stopped(f"encoding {fmt.name} was stopped") from None
                if time.monotonic() > deadline:
                    raise InvalidAudio(
                        f"encoding {fmt.name} took longer than {ENCODE_TIMEOUT_S} s"
                    ) from None
    except BaseException:  # stopped, timed out, the task's time limit: no encoder outlives it
        process.kill()
        process.communicate()
        dest.unlink(missing_ok=True)
        raise
    if process.returncode:
        dest.unlink(missing_ok=True)
        failed = subprocess.CalledProcessError(process.returncode, command, stderr=stderr)
        raise _failure(failed, fmt, limits, _children_cpu_s() - cpu_before)


def _command(
    source: Path,
    demuxer: str,
    dest: str,
    fmt: Format,
    gain_db: float,
    limit_dbfs: float,
    oversample: int = 1,
) -> list[str]:
    """The encoder process: the source's first audio stream through the gain and the limiter
    (at `oversample` times the output rate) into `fmt`'s encoder and muxer (transcode.py, under
    this interpreter, isolated mode)."""
    limit = _limiter_level(limit_dbfs)
    program = os.environ.get(ENCODER_EXE_ENV)
    runner = [program] if program else [sys.executable, "-I", str(TRANSCODER)]
    return [
        *runner,
        str(source),
        dest,
        "--demuxer",
        demuxer,
        f"--gain-db={gain_db:.3f}",
        f"--limit={limit:.5f}",
        f"--oversample={oversample}",
        *fmt.transcoder_args(),
    ]


def _limiter_level(limit_dbfs: float) -> float:
    """The limiter's level, linear, as alimiter takes it (its range: 0.0625 to 1)."""
    return min(max(10 ** (limit_dbfs / 20), 0.0625), 1.0)


def _pcm_loudness(
    frames: Iterable[av.AudioFrame], gain_db: float, limit_dbfs: float, stop: Callable[[], bool]
) -> float | None:
    """Integrated loudness of decoded frames through the gain and the limiter (the encoder's
    filters, transcode.limited), measured in this process as media.analyse() measured the source
    itself (None: silent or no frames)."""
    meter = None
    next_check = time.monotonic() + STOP_CHECK_S
    try:
        for frame in transcode.limited(frames, gain_db, _limiter_level(limit_dbfs)):
            if meter is None:
                channels = len(frame.layout.channels)
                meter = pyebur128.R128State(
                    channels, frame.sample_rate, pyebur128.MeasurementMode.MODE_I
                )
            meter.add_frames(frame.to_ndarray().reshape(-1), frame.samples)
            if time.monotonic() >= next_check:
                next_check += STOP_CHECK_S
                if stop():
                    raise Stopped("measuring was stopped")
    except av.FFmpegError as exc:
        raise InvalidAudio(f"measuring the limited audio failed: {exc}") from exc
    integrated = pyebur128.get_loudness_global(meter) if meter is not None else -math.inf
    return integrated if math.isfinite(integrated) and integrated > SILENCE_LUFS else None


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _failure(
    exc: subprocess.CalledProcessError, fmt: Format, limits: Limits, cpu_s: float
) -> Exception:
    """Why the encoder stopped, for the job's owner (or OSError when the disk is full)."""
    stderr = exc.stderr.decode(errors="replace")
    if "No space left on device" in stderr:
        return OSError(errno.ENOSPC, f"encoding {fmt.name}: no space left on device")
    # An encoder may catch SIGXCPU and exit quietly: its CPU time tells.
    if cpu_s >= limits.encoder_cpu_s or exc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return InvalidAudio(
            f"encoding {fmt.name} used more than its {limits.encoder_cpu_s} s of CPU time"
        )
    if exc.returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return InvalidAudio(
            f"the {fmt.name} rendition would be larger than the "
            f"{limits.max_output_bytes // 2**20} MB limit"
        )
    if any(sign in stderr for sign in _OUT_OF_MEMORY) or exc.returncode == -signal.SIGSEGV:
        return InvalidAudio(
            f"encoding {fmt.name} needed more than its "
            f"{limits.encoder_memory_bytes // 2**20} MB of memory"
        )
    message = stderr.strip().splitlines()[-1:] or [f"exit status {exc.returncode}"]
    return InvalidAudio(f"encoding {fmt.name} failed: {message[0][:200]}")


# FFmpeg's ENOMEM, Python's, and the loader's when a library does not fit in the address space.
_OUT_OF_MEMORY = ("Cannot allocate memory", "MemoryError", "failed to map segment")
_PR_SET_PDEATHSIG = 1
# Looked up once here: between fork and exec (with other threads running) only plain calls.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _confine(limits: Limits) -> None:
    """In the encoder's process, before it runs: die with the worker process that started it (a
    worker killed mid-encode must not leave an encoder running), and run under rlimits on
    memory, CPU time and the size of any file it writes (the rendition)."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    resource.setrlimit(resource.RLIMIT_AS, (limits.encoder_memory_bytes,) * 2)
    resource.setrlimit(resource.RLIMIT_CPU, (limits.encoder_cpu_s, limits.encoder_cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_output_bytes,) * 2)
