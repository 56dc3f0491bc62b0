"""Renditions: gain to the preset's loudness with a limiter for the true-peak ceiling, encoded in
a child process by PyAV's FFmpeg (transcode.py: the filters and encoders the ffmpeg CLI runs, at
its speed), each verified by measuring the file made."""

from __future__ import annotations

import ctypes
import errno
import functools
import itertools
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .media import SILENCE_LUFS, Analysis, InvalidAudio, Limits, Loudness, analyse

LOUDNESS_TOLERANCE_LU = 1.0
MAX_ATTEMPTS = 4
SETTLE_LU = 0.5  # stop correcting once this close to the target (the promise is ±1 LU)
# The gain search measures the loudness after the limiter at several gains in one decode of the
# source (transcode.py --measure-gain): these offsets (dB) over the gain planned without the
# limiter. Speech lifted 10 dB into the limiter needed up to +9 dB more for streaming (Opus's
# lower limit, a retry's lower still); the loudness is smooth in the gain, so interpolating
# between points 2 dB apart misses by a few hundredths of a LU. Where the target lies beyond
# them, another pass goes further, SEARCH_STEPS in all.
SEARCH_OFFSETS_DB = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0)
SEARCH_STEPS = 3
# The limiter runs at this multiple of the output rate where it acts (a true-peak limiter: a
# sample-peak limiter at 22.05 kHz let inter-sample peaks 1-3 dB over its level).
OVERSAMPLE = 4
# How far under the ceiling the limiter is set, per encoder: what the encoder adds to the true
# peak of limited audio (measured on the benchmark's speech with the oversampled limiter: Opus
# 96k up to +1.1 dB, AAC 160k +0.2-0.55, LAME V2 +0.1-0.26, FLAC none). FFmpeg's AAC encoder
# also spikes now and then, erratically with the exact gain (+0.9 to +2 dB, with or without
# PNS): a larger headroom does not prevent it, render()'s retry at a lower limit does.
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
    gain = limited_gain(source, analysis, gain, limit, target_lufs, limits, stop)
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
                gain = limited_gain(source, analysis, gain, limit, target_lufs, limits, stop)
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
    limits: Limits,
    stop: Callable[[], bool] = lambda: False,
) -> float:
    """The gain that brings the source to the target *after* the limiter.

    Where the gain lifts peaks into the limiter (speech raised by 10 dB), limiting takes loudness
    away, and each correction used to cost an encode and a measure of the rendition. Here the
    loudness after the same gain and limiter (no codec, integrated loudness only) is measured at
    several gains in one pass over the source, and the gain for the target interpolated between
    them; the encode then usually lands on the first try. Material the limiter leaves alone (its
    true peak stays under the limit) needs no search.

    The limiter holds peaks at its level whatever the level is (it scales: measured to 0.0001
    LU), so the loudness at gain g and limit L is L + F(g - L) for one curve F per source: the
    points measured for one format's limit serve the others' (AAC, Opus and a retry's lower
    limit), one pass for the job.
    """
    if not limiting(analysis, gain_db, limit_dbfs):
        return gain_db
    curve = _job_curve(source, target_lufs)
    need = target_lufs - limit_dbfs  # what F must reach
    start = gain_db - limit_dbfs  # x = gain - limit: how far the gain lifts the audio past it
    for _ in range(SEARCH_STEPS):
        if (found := _solve(curve, need)) is not None:
            return found + limit_dbfs
        xs = [round(x, 3) for x in _next_candidates(curve, need, start)]
        measured = _limited_loudness(
            source, analysis, [x + limit_dbfs for x in xs], limit_dbfs, limits, stop
        )
        if all(lufs is None for lufs in measured):
            return gain_db  # silent after the gate: nothing to correct
        curve.update(
            (x, lufs - limit_dbfs) for x, lufs in zip(xs, measured, strict=True) if lufs is not None
        )
    found = _solve(curve, need)
    return (found if found is not None else _extrapolate(curve, need)) + limit_dbfs


# The points of F (x = gain - limit -> loudness - limit) measured for the job in hand, one job at
# a time per worker process; keyed by the target too, so that each job searches for itself.
_curves: dict[tuple[str, int, float], dict[float, float]] = {}


def _job_curve(source: Path, target_lufs: float) -> dict[float, float]:
    job = (str(source), source.stat().st_mtime_ns, target_lufs)
    if job not in _curves:
        _curves.clear()
    return _curves.setdefault(job, {})


def _solve(curve: dict[float, float], need: float) -> float | None:
    """x where F reaches `need`, interpolated between the measured points around it; None if
    they do not reach it (or there are none)."""
    points = sorted(curve.items())
    if not points:
        return None
    lowest_x, lowest_f = points[0]
    if lowest_f >= need:
        # At most 1 dB of loudness per dB of gain (the limiter only takes away): this is where
        # the lowest point would reach the target unlimited; the first point is the unlimited
        # plan, so this is it or within a rounding of it.
        return lowest_x - (lowest_f - need)
    for (x0, f0), (x1, f1) in itertools.pairwise(points):
        if f0 < need <= f1:
            return x0 + (need - f0) * (x1 - x0) / (f1 - f0)
    return None


def _slope(points: list[tuple[float, float]]) -> float:
    """dF/dx at the top of the points measured: under the limiter a dB of gain buys less than a
    dB of loudness (1 before there are two points; at least 0.2)."""
    if len(points) < 2:
        return 1.0
    (x0, f0), (x1, f1) = points[-2:]
    return min(max((f1 - f0) / (x1 - x0), 0.2), 1.0)


def _extrapolate(curve: dict[float, float], need: float) -> float:
    """x where F reaches `need` past the highest point, by the slope there (the curve only
    flattens: this falls short), at most twice the search's span past it (a click train's
    loudness never gets there)."""
    points = sorted(curve.items())
    top_x, top_f = points[-1]
    step = (need - top_f) / _slope(points)
    return top_x + min(step, 2 * SEARCH_OFFSETS_DB[-1])


def _next_candidates(curve: dict[float, float], need: float, start: float) -> list[float]:
    """The gains (as x) of the next pass: from the unlimited plan up, or, when the points so far
    fall short of the target, from where their slope says it is."""
    base = _extrapolate(curve, need) if curve else start
    return [base + offset for offset in SEARCH_OFFSETS_DB]


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
    try:
        _run(command, f"encoding {fmt.name}", limits, stop)
    except BaseException:  # no partial rendition outlives a failure
        dest.unlink(missing_ok=True)
        raise


def _run(command: list[str], what: str, limits: Limits, stop: Callable[[], bool]) -> bytes:
    """Runs an encoder process (confined, killed on stop or timeout); returns its stdout."""
    cpu_before = _children_cpu_s()
    deadline = time.monotonic() + ENCODE_TIMEOUT_S
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=functools.partial(_confine, limits),  # only setrlimit/prctl after fork
    )
    try:
        while True:
            try:
                stdout, stderr = process.communicate(timeout=STOP_CHECK_S)
                break
            except subprocess.TimeoutExpired:
                if stop():
                    raise Stopped(f"{what} was stopped") from None
                if time.monotonic() > deadline:
                    raise InvalidAudio(f"{what} took longer than {ENCODE_TIMEOUT_S} s") from None
    except BaseException:  # stopped, timed out, the task's time limit: no encoder outlives it
        process.kill()
        process.communicate()
        raise
    if process.returncode:
        failed = subprocess.CalledProcessError(process.returncode, command, stderr=stderr)
        raise _failure(failed, what, limits, _children_cpu_s() - cpu_before)
    return stdout


def _runner() -> list[str]:
    """transcode.py under this interpreter, isolated mode (or the test's stand-in)."""
    program = os.environ.get(ENCODER_EXE_ENV)
    return [program] if program else [sys.executable, "-I", str(TRANSCODER)]


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
    limit = min(max(10 ** (limit_dbfs / 20), 0.0625), 1.0)
    return [
        *_runner(),
        str(source),
        dest,
        "--demuxer",
        demuxer,
        f"--gain-db={gain_db:.3f}",
        f"--limit={limit:.5f}",
        f"--oversample={oversample}",
        *fmt.transcoder_args(),
    ]


def _limited_loudness(
    source: Path,
    analysis: Analysis,
    gains_db: list[float],
    limit_dbfs: float,
    limits: Limits,
    stop: Callable[[], bool] = lambda: False,
) -> list[float | None]:
    """Integrated loudness of the source through each gain and the limiter (the source's rate
    and channels, no oversampling, no codec), all from one decode in one encoder process under
    the same rules (None: silent)."""
    limit = min(max(10 ** (limit_dbfs / 20), 0.0625), 1.0)
    command = [
        *_runner(),
        str(source),
        "--demuxer",
        demuxer_name(analysis),
        f"--limit={limit:.5f}",
        *(f"--measure-gain={gain:.3f}" for gain in gains_db),
    ]
    out = _run(command, "measuring the limited audio", limits, stop)
    try:
        found = json.loads(out)
        if not isinstance(found, list) or len(found) != len(gains_db):
            raise ValueError(found)
        values = [None if v is None else float(v) for v in found]
    except (ValueError, TypeError) as exc:
        raise InvalidAudio("measuring the limited audio failed (no result)") from exc
    return [v if v is not None and v > SILENCE_LUFS else None for v in values]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _failure(
    exc: subprocess.CalledProcessError, what: str, limits: Limits, cpu_s: float
) -> Exception:
    """Why the encoder process stopped, for the job's owner (or OSError when the disk is full).
    `what`: what it was doing ("encoding mp3")."""
    stderr = exc.stderr.decode(errors="replace")
    if "No space left on device" in stderr:
        return OSError(errno.ENOSPC, f"{what}: no space left on device")
    # An encoder may catch SIGXCPU and exit quietly: its CPU time tells.
    if cpu_s >= limits.encoder_cpu_s or exc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return InvalidAudio(f"{what} used more than its {limits.encoder_cpu_s} s of CPU time")
    if exc.returncode == -signal.SIGXFSZ or "File too large" in stderr:
        return InvalidAudio(
            f"{what}: the rendition would be larger than the "
            f"{limits.max_output_bytes // 2**20} MB limit"
        )
    if any(sign in stderr for sign in _OUT_OF_MEMORY) or exc.returncode == -signal.SIGSEGV:
        return InvalidAudio(
            f"{what} needed more than its {limits.encoder_memory_bytes // 2**20} MB of memory"
        )
    message = stderr.strip().splitlines()[-1:] or [f"exit status {exc.returncode}"]
    return InvalidAudio(f"{what} failed: {message[0][:200]}")


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
