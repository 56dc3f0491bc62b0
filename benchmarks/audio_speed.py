"""Benchmark audio processing speed and accuracy: our pipeline vs. the ffmpeg CLI's loudnorm.

For every preset (podcast, broadcast, streaming) and every test source, three ways of making the
preset's renditions are timed side by side, in "x realtime" (seconds of source audio processed
per wall-clock second, all of the preset's formats together):

  (a) pipeline     what a job does: media.analyse(source) (loudness + waveform), then
                   encode.render() per format, which encodes (a child process running PyAV's
                   FFmpeg: volume + alimiter + the encoder, encode._encode),
                   measures the rendition with analyse() and retries (up to 3 encodes) when it
                   misses the loudness target or the true-peak ceiling;
  (b) loudnorm     the ffmpeg CLI baseline: per format one ffmpeg run from the same source, with
                   the same codec args (encode.FORMATS[fmt].codec_args, including their -ar) and a
                   single-pass `loudnorm=I=<target>:TP=<ceiling>:LRA=11` filter; no verification.
                   `print_format=json` is added (and -loglevel info) so loudnorm reports which mode
                   it used; that costs a few hundred bytes of stderr;
  (c) encode only  just the encode step of (a): encode._encode() once per format with the gain and
                   limiter level of (a)'s last encode (recorded in (a)); no source analysis, no
                   verification, no retries.

Sources (made on the spot in a temporary folder, removed at the end): a dynamic "program"
(signals.program() 12 s blocks concatenated, stereo 48 kHz) and espeak-ng speech (concatenated,
mono 22.05 kHz), each as FLAC and as MP3. Rounds alternate the order (a, b, c / c, b, a) per
source and preset, so the noise of a small machine hits every method; medians are reported.
Then the renditions of the last round of (a) and (b) are measured with media.analyse() for
accuracy: integrated loudness vs. the target, true peak vs. the ceiling.

    .venv/bin/python benchmarks/audio_speed.py [--rounds 2] [--program-seconds 120]
        [--speech-seconds 60] [--presets podcast,broadcast,streaming]

Prints tables and writes benchmarks/results/audio_speed-<UTC>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
import numpy as np

REPO_DIR = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_DIR / "app"), str(REPO_DIR)]

from audio.presets import PRESETS, Preset  # noqa: E402
from audio.processing import encode, media  # noqa: E402
from tests.audio import signals  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
# The reference ffmpeg CLI (the `bench` dependency group; no image carries it): the same FFmpeg
# release as PyAV's, so (b)/(d) vs (a)/(c) compares the pipelines, not two FFmpeg versions.
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
LIMITS = media.Limits()  # the defaults of AUDIO_MAX_* in core.settings
BASELINE_TIMEOUT_S = 1800
LOUDNORM_LRA = 11
PROGRAM_BLOCK_S = 12.0
SPEECH_GAP_S = 0.4

METHODS = ("pipeline", "loudnorm", "encode_only", "loudnorm2")
METHOD_LABELS = {
    "pipeline": "(a) pipeline: analyse + render per format (verified, retries)",
    "loudnorm": "(b) ffmpeg CLI, single-pass loudnorm per format (unverified)",
    "encode_only": "(c) encode step of (a) only: encode._encode with (a)'s last gain/limit",
    "loudnorm2": "(d) ffmpeg CLI, two-pass linear loudnorm (ffmpeg-normalize's way, unverified)",
}
SHORT = {"pipeline": "(a)", "loudnorm": "(b)", "encode_only": "(c)", "loudnorm2": "(d)"}
DELIVERING = ("pipeline", "loudnorm", "loudnorm2")  # the methods whose renditions are measured


class BenchError(RuntimeError):
    pass


# --- sources -------------------------------------------------------------------------------


@dataclass
class Source:
    key: str  # "program.flac"
    material: str
    path: Path
    demuxer: str
    codec: str
    sample_rate: int
    channels: int
    duration_s: float
    loudness: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": self.path.name, "duration_s": round(self.duration_s, 3)}


def program_samples(seconds: float) -> np.ndarray:
    """signals.program() blocks (quiet tone, loud tone, noise, silence), each with its own noise."""
    blocks = math.ceil(seconds / PROGRAM_BLOCK_S)
    samples = np.concatenate(
        [signals.program(PROGRAM_BLOCK_S, seed=seed) for seed in range(1, blocks + 1)]
    )
    return samples[: int(seconds * signals.RATE)]


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as reader:
        if reader.getsampwidth() != 2:
            raise BenchError(f"{path.name}: expected 16-bit PCM from espeak-ng")
        rate, channels = reader.getframerate(), reader.getnchannels()
        raw = reader.readframes(reader.getnframes())
    data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return data.reshape(-1, channels), rate


def speech_samples(seconds: float, workdir: Path) -> tuple[np.ndarray, int]:
    """espeak-ng sentences with short pauses, repeated until at least `seconds` long."""
    clips: list[np.ndarray] = []
    rate = 0
    for index, text in enumerate(signals.SPEECH_TEXTS):
        clip, rate = read_wav(signals.speech(text, workdir / f"speech-{index}.wav"))
        clips.append(clip)
    gap = np.zeros((int(SPEECH_GAP_S * rate), clips[0].shape[1]), dtype=np.float32)
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * rate:
        for clip in clips:
            parts += [clip, gap]
            total += len(clip) + len(gap)
            if total >= seconds * rate:
                break
    return np.concatenate(parts), rate


def make_sources(workdir: Path, program_s: float, speech_s: float) -> list[Source]:
    material: dict[str, tuple[np.ndarray, int]] = {
        "program": (program_samples(program_s), signals.RATE),
        "speech": speech_samples(speech_s, workdir),
    }
    sources: list[Source] = []
    for name, (samples, rate) in material.items():
        for kind in ("flac", "mp3"):
            path = signals.write(workdir / f"{name}.{kind}", samples, kind, rate=rate)
            analysis = media.analyse(path, LIMITS, waveform=False)  # also warms the page cache
            sources.append(
                Source(
                    key=f"{name}.{kind}",
                    material=name,
                    path=path,
                    demuxer=encode.demuxer_name(analysis),
                    codec=analysis.codec,
                    sample_rate=analysis.sample_rate,
                    channels=analysis.channels,
                    duration_s=analysis.duration_s,
                    loudness=analysis.loudness.as_dict(),
                )
            )
    return sources


# --- the three methods ---------------------------------------------------------------------


@dataclass
class Step:
    """One rendition (one format) of one run."""

    format: str
    wall_s: float
    error: str | None = None
    # (a): how render() got there
    attempts: int | None = None  # ffmpeg encodes inside render() (Rendition.encodes)
    gain_db: float | None = None  # gain of the delivered encode
    limit_dbfs: float | None = None  # limiter level of the delivered encode
    within_target: bool | None = None
    note: str | None = None
    # (b): loudnorm's own report (print_format=json)
    normalization_type: str | None = None
    loudnorm_output_i: float | None = None
    loudnorm_output_tp: float | None = None


@dataclass
class Run:
    round: int
    method: str
    source: str
    preset: str
    wall_s: float
    cpu_s: float  # this process + waited-for children (ffmpeg), user + system
    loadavg_before: tuple[float, float, float]
    analyse_s: float | None = None  # (a): media.analyse() of the source
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(step.error is None for step in self.steps)


def output_path(outdir: Path, method: str, source: Source, preset: Preset, fmt: str) -> Path:
    stem = source.key.replace(".", "-")
    return outdir / method / f"{stem}.{preset.name}.{encode.FORMATS[fmt].extension}"


FAILURES = (media.InvalidAudio, subprocess.SubprocessError, OSError)


def run_pipeline(
    source: Source, preset: Preset, outdir: Path, run: Run
) -> dict[str, tuple[float, float]]:
    """(a). Returns the (gain_db, limit_dbfs) of each format's delivered encode, for (c)."""
    chosen: dict[str, tuple[float, float]] = {}
    started = time.perf_counter()
    try:
        analysis = media.analyse(source.path, LIMITS)
    except FAILURES as exc:
        run.analyse_s = time.perf_counter() - started
        run.steps.append(Step("analyse", run.analyse_s, error=str(exc)))
        return chosen
    run.analyse_s = time.perf_counter() - started
    for name in preset.formats:
        fmt = encode.FORMATS[name]
        started = time.perf_counter()
        try:
            rendition = encode.render(
                source.path,
                analysis,
                fmt,
                output_path(outdir, "pipeline", source, preset, name),
                target_lufs=preset.target_lufs,
                ceiling_dbtp=preset.ceiling_dbtp,
                limits=LIMITS,
            )
        except FAILURES as exc:
            wall = time.perf_counter() - started
            run.steps.append(Step(name, wall, error=str(exc)))
            continue
        wall = time.perf_counter() - started
        gain, limit = rendition.gain_db, rendition.limit_dbfs
        chosen[name] = (gain, limit)
        run.steps.append(
            Step(
                name,
                wall,
                attempts=rendition.encodes,
                gain_db=round(gain, 3),
                limit_dbfs=round(limit, 3),
                within_target=rendition.within_target,
                note=rendition.note,
            )
        )
    return chosen


def loudnorm_command(
    source: Source,
    preset: Preset,
    fmt: encode.Format | None,
    dest: Path | None,
    measured: dict[str, str] | None = None,
) -> list[str]:
    """Same input handling and encoder settings as encode._encode; loudnorm instead of the
    volume + alimiter filters. Without a format: loudnorm's measuring pass (no output). With
    `measured` (that pass's report): the second pass, linear (one gain for the whole file) where
    loudnorm can."""
    loudnorm = (
        f"loudnorm=I={preset.target_lufs:g}:TP={preset.ceiling_dbtp:g}:LRA={LOUDNORM_LRA}"
        ":print_format=json"
    )
    if measured:
        loudnorm += (
            f":measured_I={measured['input_i']}:measured_TP={measured['input_tp']}"
            f":measured_LRA={measured['input_lra']}:measured_thresh={measured['input_thresh']}"
            f":offset={measured['target_offset']}:linear=true"
        )
    output = ["-f", "null", "-"] if fmt is None else [*fmt.codec_args, "-y", str(dest)]
    return [
        FFMPEG,
        "-nostdin",
        "-hide_banner",
        "-nostats",
        "-loglevel",
        "info",
        "-protocol_whitelist",
        "file",
        "-f",
        source.demuxer,
        "-i",
        str(source.path),
        "-map",
        "0:a:0",
        "-vn",
        "-sn",
        "-dn",
        "-map_metadata",
        "-1",
        "-af",
        loudnorm,
        *output,
    ]


def loudnorm_report(stderr: str) -> dict[str, str]:
    blocks = re.findall(r"\{[^{}]*\"normalization_type\"[^{}]*\}", stderr)
    if not blocks:
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(blocks[-1]).items()}
    except json.JSONDecodeError:
        return {}


def float_or_none(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def run_loudnorm(
    source: Source, preset: Preset, outdir: Path, run: Run, two_pass: bool = False
) -> None:
    """(b), or (d) with `two_pass`: one measuring pass of the source, then one per format."""
    measured = None
    if two_pass:
        started = time.perf_counter()
        result = subprocess.run(
            loudnorm_command(source, preset, None, None),
            capture_output=True,
            timeout=BASELINE_TIMEOUT_S,
            check=False,
        )
        measured = loudnorm_report(result.stderr.decode(errors="replace"))
        run.analyse_s = time.perf_counter() - started
        if result.returncode or not measured:
            run.steps.append(Step("measure", run.analyse_s, error="loudnorm's first pass failed"))
            return
    for name in preset.formats:
        command = loudnorm_command(
            source,
            preset,
            encode.FORMATS[name],
            output_path(outdir, run.method, source, preset, name),
            measured,
        )
        started = time.perf_counter()
        try:
            result = subprocess.run(
                command, capture_output=True, timeout=BASELINE_TIMEOUT_S, check=False
            )
        except FAILURES as exc:
            run.steps.append(Step(name, time.perf_counter() - started, error=str(exc)))
            continue
        wall = time.perf_counter() - started
        stderr = result.stderr.decode(errors="replace")
        if result.returncode != 0:
            last = stderr.strip().splitlines()[-1:] or ["?"]
            run.steps.append(Step(name, wall, error=f"ffmpeg exit {result.returncode}: {last[0]}"))
            continue
        report = loudnorm_report(stderr)
        run.steps.append(
            Step(
                name,
                wall,
                normalization_type=report.get("normalization_type"),
                loudnorm_output_i=float_or_none(report.get("output_i")),
                loudnorm_output_tp=float_or_none(report.get("output_tp")),
            )
        )


def run_encode_only(
    source: Source, preset: Preset, outdir: Path, chosen: dict[str, tuple[float, float]], run: Run
) -> None:
    """(c)."""
    for name in preset.formats:
        if name not in chosen:
            run.steps.append(Step(name, 0.0, error="no gain/limit recorded from (a)"))
            continue
        gain, limit = chosen[name]
        dest = output_path(outdir, "encode_only", source, preset, name)
        started = time.perf_counter()
        try:
            encode._encode(
                source.path,
                source.demuxer,
                dest,
                encode.FORMATS[name],
                gain_db=gain,
                limit_dbfs=limit,
                limits=media.Limits(),
            )
        except FAILURES as exc:
            run.steps.append(Step(name, time.perf_counter() - started, error=str(exc)))
            continue
        run.steps.append(
            Step(name, time.perf_counter() - started, gain_db=round(gain, 3), limit_dbfs=limit)
        )


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def bench(
    args: argparse.Namespace,
    sources: list[Source],
    presets: list[Preset],
    outdir: Path,
    runs: list[Run],
) -> None:
    for method in METHODS:
        (outdir / method).mkdir(parents=True, exist_ok=True)
    chosen: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for round_no in range(1, args.rounds + 1):
        order = METHODS if round_no % 2 else tuple(reversed(METHODS))
        print(f"\n== round {round_no}/{args.rounds} (order {', '.join(order)})", flush=True)
        for source in sources:
            for preset in presets:
                cells = []
                for method in order:
                    load = os.getloadavg()
                    run = Run(
                        round_no,
                        method,
                        source.key,
                        preset.name,
                        0.0,
                        0.0,
                        (round(load[0], 2), round(load[1], 2), round(load[2], 2)),
                    )
                    cpu_before, started = cpu_seconds(), time.perf_counter()
                    if method == "pipeline":
                        chosen[source.key, preset.name] = run_pipeline(source, preset, outdir, run)
                    elif method in ("loudnorm", "loudnorm2"):
                        run_loudnorm(source, preset, outdir, run, method == "loudnorm2")
                    else:
                        run_encode_only(
                            source,
                            preset,
                            outdir,
                            chosen.get((source.key, preset.name), {}),
                            run,
                        )
                    run.wall_s = time.perf_counter() - started
                    run.cpu_s = cpu_seconds() - cpu_before
                    runs.append(run)
                    speed = source.duration_s / run.wall_s if run.ok else None
                    cells.append(f"{SHORT[method]} {fmt(speed)}x")
                    for step in run.steps:
                        if step.error:
                            print(f"    ! {method} {step.format}: {step.error}", flush=True)
                print(f"    {source.key:<13} {preset.name:<10} " + "  ".join(cells), flush=True)


# --- accuracy ------------------------------------------------------------------------------


@dataclass
class Measured:
    method: str
    source: str
    preset: str
    format: str
    target_lufs: float
    ceiling_dbtp: float
    integrated_lufs: float | None = None
    true_peak_dbtp: float | None = None
    lra_lu: float | None = None
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    size_bytes: int | None = None
    error: str | None = None

    @property
    def lufs_error(self) -> float | None:
        if self.integrated_lufs is None:
            return None
        return self.integrated_lufs - self.target_lufs


def measure_outputs(sources: list[Source], presets: list[Preset], outdir: Path) -> list[Measured]:
    measured: list[Measured] = []
    for method in DELIVERING:
        for source in sources:
            for preset in presets:
                for name in preset.formats:
                    path = output_path(outdir, method, source, preset, name)
                    row = Measured(
                        method,
                        source.key,
                        preset.name,
                        name,
                        preset.target_lufs,
                        preset.ceiling_dbtp,
                    )
                    try:
                        analysis = media.analyse(path, LIMITS, waveform=False)
                    except FAILURES as exc:
                        row.error = str(exc)
                    else:
                        loud = analysis.loudness
                        row.integrated_lufs = round_or_none(loud.integrated_lufs, 3)
                        row.true_peak_dbtp = round_or_none(loud.true_peak_dbtp, 3)
                        row.lra_lu = round_or_none(loud.lra_lu, 2)
                        row.sample_rate = analysis.sample_rate
                        row.channels = analysis.channels
                        row.duration_s = round(analysis.duration_s, 3)
                        row.size_bytes = path.stat().st_size
                    measured.append(row)
    return measured


def accuracy_stats(rows: list[Measured]) -> dict[str, Any]:
    errors = [abs(e) for r in rows if (e := r.lufs_error) is not None]
    peaks = [r for r in rows if r.true_peak_dbtp is not None]
    over = [r.true_peak_dbtp - r.ceiling_dbtp for r in peaks if r.true_peak_dbtp is not None]
    return {
        "renditions": len(rows),
        "measured": len(errors),
        "failed": sum(1 for r in rows if r.error),
        "lufs_abs_error_max": round(max(errors), 2) if errors else None,
        "lufs_abs_error_mean": round(statistics.fmean(errors), 2) if errors else None,
        "within_1lu": sum(1 for e in errors if e <= encode.LOUDNESS_TOLERANCE_LU),
        "tp_at_or_below_ceiling": sum(1 for o in over if o <= 0),
        "tp_over_ceiling_max_db": round(max(over), 2) if over else None,
        "sample_rates": sorted({r.sample_rate for r in rows if r.sample_rate}),
    }


# --- summaries and tables ------------------------------------------------------------------


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def round_or_none(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summarize(
    runs: list[Run], sources: list[Source], presets: list[Preset]
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """summary[preset][source or "all"][method] = medians over rounds."""
    durations = {s.key: s.duration_s for s in sources}
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for preset in presets:
        per_source: dict[str, dict[str, dict[str, Any]]] = {}
        for key in [*durations, "all"]:
            per_method: dict[str, dict[str, Any]] = {}
            for method in METHODS:
                wall_x, cpu_x, analyse_share = [], [], []
                rounds = sorted({r.round for r in runs})
                for round_no in rounds:
                    chosen = [
                        r
                        for r in runs
                        if r.preset == preset.name
                        and r.method == method
                        and r.round == round_no
                        and (key == "all" or r.source == key)
                    ]
                    if not chosen or not all(r.ok for r in chosen):
                        continue
                    audio = sum(durations[r.source] for r in chosen)
                    wall = sum(r.wall_s for r in chosen)
                    cpu = sum(r.cpu_s for r in chosen)
                    wall_x.append(audio / wall)
                    cpu_x.append(audio / cpu if cpu > 0 else math.inf)
                    if method == "pipeline":
                        analyse_share.append(sum(r.analyse_s or 0.0 for r in chosen) / wall)
                per_method[method] = {
                    "rounds_ok": len(wall_x),
                    "x_realtime_wall": round_or_none(median_of(wall_x), 2),
                    "x_realtime_cpu": round_or_none(median_of(cpu_x), 2),
                    "x_realtime_wall_per_round": [round(x, 2) for x in wall_x],
                }
                if method == "pipeline":
                    per_method[method]["analyse_share_of_wall"] = round_or_none(
                        median_of(analyse_share), 3
                    )
            per_source[key] = per_method
        summary[preset.name] = per_source
    return summary


def attempts_text(runs: list[Run], source: str, preset: str) -> str:
    """render()'s encodes per format in the last (a) run, e.g. "1+2+1"."""
    chosen = [
        r for r in runs if r.method == "pipeline" and r.source == source and r.preset == preset
    ]
    if not chosen:
        return "-"
    return "+".join(str(s.attempts) for s in chosen[-1].steps if s.attempts is not None) or "-"


def speed_table(
    runs: list[Run],
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]],
    sources: list[Source],
) -> str:
    header = (
        f"{'preset':<10} {'source':<13} | {'(a)':>6} {'(b)':>6} {'(c)':>6} {'(d)':>6} {'a/b':>5} "
        f"{'a/d':>5} | {'(a)':>6} {'(b)':>6} {'(c)':>6} {'(d)':>6} | {'analyse':>7} {'encodes':>7}"
    )
    lines = [
        "SPEED: x realtime (seconds of source audio per second), median over rounds",
        f"{'':<24} | {'wall clock':^38} | {'CPU time (user+sys)':^27} | {'(a) only':^15}",
        header,
        "-" * len(header),
    ]
    for preset, per_source in summary.items():
        for key in [*(s.key for s in sources), "all"]:
            cells = per_source[key]
            a, b, c, d = (cells[m]["x_realtime_wall"] for m in METHODS)
            ratio = a / b if a and b else None
            ratio_d = a / d if a and d else None
            share = cells["pipeline"].get("analyse_share_of_wall")
            encodes = attempts_text(runs, key, preset) if key != "all" else ""
            label = "all sources" if key == "all" else key
            lines.append(
                f"{preset:<10} {label:<13} | {fmt(a):>6} {fmt(b):>6} {fmt(c):>6} {fmt(d):>6} "
                f"{fmt(ratio, 2):>5} {fmt(ratio_d, 2):>5} | "
                + " ".join(f"{fmt(cells[m]['x_realtime_cpu']):>6}" for m in METHODS)
                + f" | {fmt(share * 100 if share is not None else None, 0) + '%':>7} "
                f"{encodes:>7}"
            )
        lines.append("-" * len(header))
    lines += [
        "a/b, a/d: (a) speed / (b) or (d) speed (below 1: our pipeline is slower).",
        "analyse: share of (a)'s wall time spent in media.analyse() of the source;",
        "encodes: ffmpeg encodes render() made per format (retries), last round.",
    ]
    return "\n".join(lines)


def accuracy_table(measured: list[Measured], presets: list[Preset]) -> str:
    header = (
        f"{'method':<4} {'preset':<10} {'n':>3} | {'max|dLU|':>8} {'mean|dLU|':>9} "
        f"{'<=1 LU':>6} | {'TP<=ceil':>8} {'max TP over':>11} | rates (Hz)"
    )
    lines = ["ACCURACY of delivered renditions (media.analyse, BS.1770 / libebur128)", header]
    lines.append("-" * len(header))
    for method in DELIVERING:
        groups = [(p.name, [r for r in measured if r.preset == p.name]) for p in presets]
        groups.append(("all", measured))
        for name, rows in groups:
            stats = accuracy_stats([r for r in rows if r.method == method])
            lines.append(
                f"{SHORT[method]:<4} {name:<10} {stats['renditions']:>3} | "
                f"{fmt(stats['lufs_abs_error_max'], 2):>8} "
                f"{fmt(stats['lufs_abs_error_mean'], 2):>9} "
                f"{stats['within_1lu']:>3}/{stats['measured']:<2} | "
                f"{stats['tp_at_or_below_ceiling']:>5}/{stats['measured']:<2} "
                f"{fmt(stats['tp_over_ceiling_max_db'], 2):>11} | "
                + ",".join(str(rate) for rate in stats["sample_rates"])
            )
        lines.append("-" * len(header))
    return "\n".join(lines)


def detail_table(measured: list[Measured], runs: list[Run]) -> str:
    def last_step(method: str, row: Measured) -> Step | None:
        for run in reversed(runs):
            if (run.method, run.source, run.preset) == (method, row.source, row.preset):
                return next((s for s in run.steps if s.format == row.format), None)
        return None

    header = (
        f"{'source':<13} {'preset':<10} {'fmt':<4} {'target':>6} | {'(a) LUFS':>8} {'TP':>6} "
        f"{'enc':>3} {'gain':>6} | {'(b) LUFS':>8} {'TP':>6} {'rate':>6} {'mode':<8}"
    )
    lines = ["RENDITIONS: measured loudness per rendition (last round)", header]
    lines.append("-" * len(header))
    ours = {(r.source, r.preset, r.format): r for r in measured if r.method == "pipeline"}
    theirs = {(r.source, r.preset, r.format): r for r in measured if r.method == "loudnorm"}
    for key, a in ours.items():
        b = theirs.get(key)
        step_a, step_b = last_step("pipeline", a), last_step("loudnorm", a)
        attempts = step_a.attempts if step_a and step_a.attempts is not None else None
        lines.append(
            f"{a.source:<13} {a.preset:<10} {a.format:<4} {a.target_lufs:>6.1f} | "
            f"{fmt(a.integrated_lufs, 2):>8} {fmt(a.true_peak_dbtp, 2):>6} "
            f"{attempts if attempts is not None else '-':>3} "
            f"{fmt(step_a.gain_db if step_a else None, 2):>6} | "
            f"{fmt(b.integrated_lufs if b else None, 2):>8} "
            f"{fmt(b.true_peak_dbtp if b else None, 2):>6} "
            f"{(b.sample_rate if b and b.sample_rate else '-'):>6} "
            f"{(step_b.normalization_type if step_b and step_b.normalization_type else '-'):<8}"
        )
    lines.append(
        "TP in dBTP; gain: the gain (dB) of (a)'s last encode; mode: loudnorm's own report."
    )
    return "\n".join(lines)


def surprises(runs: list[Run], measured: list[Measured], sources: list[Source]) -> list[str]:
    notes: list[str] = []
    errors = [(r, s) for r in runs for s in r.steps if s.error]
    for run, step in errors:
        notes.append(
            f"round {run.round} {run.method} {run.source} {run.preset} {step.format}: {step.error}"
        )
    modes = sorted(
        {
            s.normalization_type or "?"
            for r in runs
            if r.method == "loudnorm"
            for s in r.steps
            if not s.error
        }
    )
    if modes:
        notes.append(f"loudnorm normalization_type seen: {', '.join(modes)}")
    source_rates = {s.key: s.sample_rate for s in sources}
    for row in measured:
        if row.method != "loudnorm" or row.sample_rate is None:
            continue
        if (
            row.sample_rate != source_rates[row.source]
            and "-ar" not in encode.FORMATS[row.format].codec_args
        ):
            notes.append(
                f"(b) {row.source} {row.preset} {row.format}: output at {row.sample_rate} Hz "
                f"(source {source_rates[row.source]} Hz; loudnorm's dynamic mode upsamples and "
                f"the codec args have no -ar), {row.size_bytes or 0:,} bytes"
            )
    for run in runs:
        if run.method != "pipeline":
            continue
        for step in run.steps:
            if step.within_target is False:
                notes.append(
                    f"round {run.round} (a) {run.source} {run.preset} {step.format}: "
                    f"not within target: {step.note}"
                )
    return notes


# --- output ----------------------------------------------------------------------------------


def git_output(*command: str) -> str | None:
    result = subprocess.run(
        ["git", *command], cwd=REPO_DIR, capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


def ffmpeg_version() -> str:
    result = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, check=False)
    return (result.stdout.splitlines() or ["?"])[0]


def write_json(
    args: argparse.Namespace,
    started: dt.datetime,
    sources: list[Source],
    presets: list[Preset],
    runs: list[Run],
    summary: dict[str, Any],
    measured: list[Measured],
    notes: list[str],
    complete: bool,
) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    for old in RESULTS_DIR.glob("audio_speed-*.json"):  # one latest result (git keeps the rest)
        old.unlink()
    path = RESULTS_DIR / "audio_speed.json"
    example = (
        loudnorm_command(sources[0], presets[0], encode.FORMATS[presets[0].formats[0]], Path("OUT"))
        if sources and presets
        else []
    )
    status = git_output("status", "--porcelain")
    payload = {
        "benchmark": "audio_speed",
        "started_utc": started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": complete,
        "git_commit": git_output("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pyav": av.__version__,
            "ffmpeg": ffmpeg_version(),
        },
        "options": {
            "rounds": args.rounds,
            "program_seconds": args.program_seconds,
            "speech_seconds": args.speech_seconds,
            "presets": [p.name for p in presets],
        },
        "methods": METHOD_LABELS,
        "loudnorm_command_example": [
            Path(a).name if a in (FFMPEG, str(sources[0].path)) else a for a in example
        ],
        "presets": [p.as_dict() for p in presets],
        "formats": {name: list(f.codec_args) for name, f in encode.FORMATS.items()},
        "sources": [s.as_dict() for s in sources],
        "median": summary,
        "accuracy": {
            method: {
                "all": accuracy_stats([r for r in measured if r.method == method]),
                **{
                    p.name: accuracy_stats(
                        [r for r in measured if r.method == method and r.preset == p.name]
                    )
                    for p in presets
                },
            }
            for method in DELIVERING
        },
        "renditions": [
            {**asdict(r), "lufs_error": round_or_none(r.lufs_error, 3)} for r in measured
        ],
        "notes": notes,
        "runs": [{**asdict(r), "ok": r.ok} for r in runs],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def plot(summary: dict, path: Path, rounds: int) -> None:
    """Speed per preset and source, each method side by side (x realtime, wall clock)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(preset, key) for preset, per in summary.items() for key in per if key != "all"]
    fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.8 / len(METHODS)
    for n, method in enumerate(METHODS):
        values = [summary[p][k][method]["x_realtime_wall"] or 0 for p, k in groups]
        ax.bar(
            [i + n * width for i in range(len(groups))],
            values,
            width,
            label=SHORT[method] + " " + METHOD_LABELS[method].split(" ", 1)[1][:40],
        )
    ax.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(groups))],
        [f"{p}\n{k}" for p, k in groups],
        fontsize=8,
    )
    ax.set_ylabel("x realtime (wall clock, median)")
    ax.set_title(f"audio: our pipeline vs the ffmpeg CLI, {rounds} alternating rounds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# --- main ------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seconds(text: str) -> float:
    value = float(text)
    if not 5 <= value <= 3600:
        raise argparse.ArgumentTypeError("must be between 5 and 3600 seconds")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=positive_int, default=2, help="rounds of (a), (b), (c)")
    parser.add_argument(
        "--program-seconds", type=seconds, default=120.0, help="length of the program source"
    )
    parser.add_argument(
        "--speech-seconds", type=seconds, default=60.0, help="minimum length of the speech source"
    )
    parser.add_argument(
        "--presets", default=",".join(PRESETS), help="comma-separated presets (default: all)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown or not names:
        parser.error(f"unknown presets {unknown}; choose from {', '.join(PRESETS)}")
    args.preset_list = [PRESETS[n] for n in names]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    presets: list[Preset] = args.preset_list
    started = dt.datetime.now(dt.UTC)
    runs: list[Run] = []
    sources: list[Source] = []
    measured: list[Measured] = []
    failure: BaseException | None = None
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="audio_speed-") as tmp:
        workdir = Path(tmp)
        try:
            print(f"Making sources in {workdir} ...", flush=True)
            sources = make_sources(workdir, args.program_seconds, args.speech_seconds)
            for s in sources:
                print(
                    f"    {s.key:<13} {s.codec:<10} {s.sample_rate} Hz {s.channels} ch "
                    f"{s.duration_s:6.1f} s  {fmt(s.loudness['integrated_lufs'], 2)} LUFS "
                    f"{fmt(s.loudness['true_peak_dbtp'], 2)} dBTP",
                    flush=True,
                )
            for key, label in METHOD_LABELS.items():
                print(f"    {SHORT[key]} = {label}")
            bench(args, sources, presets, workdir / "out", runs)
            print("\nMeasuring the renditions of the last round ...", flush=True)
            measured = measure_outputs(sources, presets, workdir / "out")
        except BaseException as exc:  # report what was measured, then re-raise or exit non-zero
            failure = exc
    notes = surprises(runs, measured, sources)
    summary = summarize(runs, sources, presets) if runs else {}
    report = []
    if runs:
        report.append(speed_table(runs, summary, sources))
    if measured:
        report += [accuracy_table(measured, presets), detail_table(measured, runs)]
    if notes:
        report.append("NOTES\n" + "\n".join(f"  - {note}" for note in notes))
    print("\n\n" + "\n\n".join(report))
    print(f"\nTotal time {time.perf_counter() - clock:.0f} s")
    if runs:
        path = write_json(
            args, started, sources, presets, runs, summary, measured, notes, failure is None
        )
        markdown = path.with_suffix(".md")
        markdown.write_text(
            f"# Audio benchmark ({started:%Y-%m-%d %H:%M} UTC, {args.rounds} alternating rounds, "
            f"load average {os.getloadavg()[0]:.2f})\n\n"
            + "\n".join(f"    {label}" for label in METHOD_LABELS.values())
            + "\n\n"
            + "\n\n".join("\n".join(f"    {ln}" for ln in part.splitlines()) for part in report)
            + "\n"
        )
        plot(summary, path.with_suffix(".png"), args.rounds)
        print(f"Results: {path.relative_to(REPO_DIR)} (and .md, .png)")
    if failure is not None:
        if isinstance(failure, KeyboardInterrupt):
            return 130
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
