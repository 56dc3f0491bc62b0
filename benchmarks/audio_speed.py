"""Audio processing speed and accuracy: our pipeline vs. the ffmpeg CLI's loudnorm.

Four ways of making each preset's renditions from each test source, timed side by side in "x
realtime" (seconds of source audio per wall-clock second, the preset's formats together); rounds
alternate their order, medians are reported. The renditions of the last round are then measured
(loudness error, true peak: numbers; the rules themselves are tests). Details: README.md.

    .venv/bin/python benchmarks/audio_speed.py [--rounds 2] [--program-seconds 120]
        [--speech-seconds 60] [--presets podcast,broadcast,streaming]

Writes results/audio_speed.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import imageio_ffmpeg
from _common import REPO_DIR, git_commit, load_average, median, pyplot, save_plot, write_results

sys.path[:0] = [str(REPO_DIR / "app"), str(REPO_DIR)]

from audio.presets import PRESETS, Preset  # noqa: E402
from audio.processing import encode, media  # noqa: E402
from testing import signals  # noqa: E402

# The reference ffmpeg CLI (imageio-ffmpeg, in no image): the same FFmpeg release as PyAV's, so
# (b)/(d) vs (a)/(c) compares the pipelines, not two FFmpeg versions.
FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
LIMITS = media.Limits()  # the defaults of AUDIO_MAX_* in core.settings
TIMEOUT_S, LOUDNORM_LRA = 1800, 11
METHOD_LABELS = {
    "pipeline": "(a) pipeline: analyse + render per format (verified, retries)",
    "loudnorm": "(b) ffmpeg CLI, single-pass loudnorm per format (unverified)",
    "encode_only": "(c) encode step of (a) only: encode._encode with (a)'s delivered settings",
    "loudnorm2": "(d) ffmpeg CLI, two-pass linear loudnorm (ffmpeg-normalize's way, unverified)",
}
METHODS = tuple(METHOD_LABELS)
SHORT = dict(zip(METHODS, ("(a)", "(b)", "(c)", "(d)"), strict=True))
FIRST_STEP = {"pipeline": "analyse", "loudnorm2": "measure"}  # once per source, before formats
DELIVERING = ("pipeline", "loudnorm", "loudnorm2")  # the methods whose renditions are measured
FAILURES = (media.InvalidAudio, subprocess.SubprocessError, OSError)


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


def make_sources(workdir: Path, program_s: float, speech_s: float) -> list[Source]:
    """A dynamic program (signals.program() blocks, stereo 48 kHz) and espeak-ng speech (mono
    22.05 kHz), each as FLAC and as MP3."""
    material = {
        "program": (signals.long_program(program_s), signals.RATE),
        "speech": signals.long_speech(speech_s, workdir),
    }
    sources = []
    for (name, (samples, rate)), kind in itertools.product(material.items(), ("flac", "mp3")):
        path = signals.write(workdir / f"{name}.{kind}", samples, kind, rate=rate)
        found = media.analyse(path, LIMITS, waveform=False)  # also warms the page cache
        facts = (encode.demuxer_name(found), found.codec, found.sample_rate, found.channels)
        loud = found.loudness
        sources.append(
            Source(f"{name}.{kind}", name, path, *facts, found.duration_s, loud.as_dict())
        )
        levels = f"{show(loud.integrated_lufs, 2)} LUFS {show(loud.true_peak_dbtp, 2)} dBTP"
        print(f"    {name}.{kind:<5} {found.codec:<10} {found.sample_rate} Hz", end=" ")
        print(f"{found.channels} ch {found.duration_s:6.1f} s  {levels}", flush=True)
    return sources


# --- the four methods ------------------------------------------------------------------------


@dataclass
class Run:
    round: int
    method: str
    source: str
    preset: str
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process + waited-for children (the encoders, ffmpeg), user + system
    loadavg_before: list[float] = field(default_factory=load_average)
    analyse_s: float | None = None  # the FIRST_STEP's: (a)'s analyse(), (d)'s measuring pass
    steps: list[dict[str, Any]] = field(default_factory=list)  # per rendition: see make()

    @property
    def ok(self) -> bool:
        return all("error" not in step for step in self.steps)


def output_path(outdir: Path, method: str, source: Source, preset: Preset, fmt: str) -> Path:
    stem = source.key.replace(".", "-")
    return outdir / method / f"{stem}.{preset.name}.{encode.FORMATS[fmt].extension}"


def timed(run: Run, step: str, action: Callable, /, *args: Any) -> tuple[Any, float, bool]:
    """(action(*args), its wall time, whether it succeeded); a failure is the step's error."""
    started = time.perf_counter()
    try:
        return action(*args), time.perf_counter() - started, True
    except FAILURES as exc:
        wall = time.perf_counter() - started
        run.steps.append({"format": step, "wall_s": wall, "error": str(exc)})
        return None, wall, False


def loudnorm_command(
    source: Source, preset: Preset, fmt: encode.Format | None = None, dest: Path = Path("OUT")
) -> list[str]:
    """The pipeline encoder's input handling and codec settings, single-pass loudnorm in place of
    its gain and limiter. Without a format: loudnorm's measuring pass (no output)."""
    options = "-nostdin -hide_banner -nostats -loglevel info -protocol_whitelist file"
    streams = "-map 0:a:0 -vn -sn -dn -map_metadata -1 -af"
    target = f"I={preset.target_lufs:g}:TP={preset.ceiling_dbtp:g}:LRA={LOUDNORM_LRA}"
    command = [FFMPEG, *options.split(), "-f", source.demuxer, "-i", str(source.path)]
    command += [*streams.split(), f"loudnorm={target}:print_format=json"]
    return command + (["-f", "null", "-"] if fmt is None else [*fmt.codec_args, "-y", str(dest)])


def ffmpeg(command: list[str], measured: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs the ffmpeg CLI: loudnorm's own report (print_format=json), {} without one. With
    `measured` (the measuring pass's report), loudnorm runs linear (one gain for the whole
    file) where that keeps the true-peak target: (d)'s second pass."""
    if measured:
        names = {"I": "input_i", "TP": "input_tp", "LRA": "input_lra", "thresh": "input_thresh"}
        added = "".join(f":measured_{name}={measured[key]}" for name, key in names.items())
        added += f":offset={measured['target_offset']}:linear=true"
        command = [arg + added if arg.startswith("loudnorm=") else arg for arg in command]
    result = subprocess.run(
        command, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S, check=False
    )
    if result.returncode:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise subprocess.SubprocessError(f"ffmpeg exit {result.returncode}: {last}")
    blocks = re.findall(r"\{[^{}]*\"normalization_type\"[^{}]*\}", result.stderr)
    try:
        return json.loads(blocks[-1]) if blocks else {}
    except json.JSONDecodeError:
        return {}


def prepare(method: str, source: Source, preset: Preset) -> Any:
    """The FIRST_STEP: (a) analyses the source, (d) measures it with loudnorm."""
    if method == "pipeline":
        return media.analyse(source.path, LIMITS)
    if method == "loudnorm2" and not (measured := ffmpeg(loudnorm_command(source, preset))):
        raise subprocess.SubprocessError("loudnorm's first pass failed")
    return measured if method == "loudnorm2" else None


def delivered(r: encode.Rendition) -> dict[str, Any]:
    """The settings of the encode delivered, as the Rendition reports them: what (c) repeats."""
    return {"gain_db": r.gain_db, "limit_dbfs": r.limit_dbfs, "oversample": r.oversample}


def make(
    method: str, source: Source, preset: Preset, name: str, dest: Path, first: Any, done: dict
) -> dict[str, Any]:
    """One rendition. Returns what (a) and (c) encoded it with (and render()'s attempts), or
    the mode loudnorm reports for (b) and (d). (a) keeps its Renditions in `done` for (c)."""
    fmt = encode.FORMATS[name]
    if method == "pipeline":
        targets = {"target_lufs": preset.target_lufs, "ceiling_dbtp": preset.ceiling_dbtp}
        done[name] = r = encode.render(source.path, first, fmt, dest, **targets, limits=LIMITS)
        return {"attempts": r.encodes, **{k: round(v, 3) for k, v in delivered(r).items()}}
    if method == "encode_only":
        if name not in done:
            raise media.InvalidAudio("no rendition from (a) to repeat")
        settings = delivered(done[name])
        encode._encode(source.path, source.demuxer, dest, fmt, **settings, limits=LIMITS)
        return settings
    report = ffmpeg(loudnorm_command(source, preset, fmt, dest), first)
    return {"normalization_type": report.get("normalization_type")}


def run_method(run: Run, source: Source, preset: Preset, outdir: Path, done: dict) -> None:
    """One method on one source at one preset: its first step, then each format, timed."""
    if run.method == "pipeline":
        done.clear()
    step = FIRST_STEP.get(run.method, "prepare")
    first, wall, ok = timed(run, step, prepare, run.method, source, preset)
    run.analyse_s = wall if run.method in FIRST_STEP else None
    for name in preset.formats if ok else ():
        dest = output_path(outdir, run.method, source, preset, name)
        said, wall, ok = timed(run, name, make, run.method, source, preset, name, dest, first, done)
        if ok:
            run.steps.append({"format": name, "wall_s": wall, **said})


def bench(args: argparse.Namespace, sources: list[Source], outdir: Path, runs: list[Run]) -> None:
    """Every method on every source and preset, in alternating order (a-d, d-a) each round."""
    for method in METHODS:
        (outdir / method).mkdir(parents=True, exist_ok=True)
    renditions: dict[tuple[str, str], dict[str, encode.Rendition]] = {}  # (a)'s, for (c)
    for round_no in range(1, args.rounds + 1):
        order = METHODS if round_no % 2 else METHODS[::-1]
        print(f"\n== round {round_no}/{args.rounds} (order {', '.join(order)})", flush=True)
        for source, preset in itertools.product(sources, args.presets):
            done, cells = renditions.setdefault((source.key, preset.name), {}), []
            for method in order:
                run = Run(round_no, method, source.key, preset.name)
                cpu, started = sum(os.times()[:4]), time.perf_counter()  # self and children
                run_method(run, source, preset, outdir, done)
                run.wall_s, run.cpu_s = time.perf_counter() - started, sum(os.times()[:4]) - cpu
                runs.append(run)
                speed = source.duration_s / run.wall_s if run.ok else None
                cells.append(f"{SHORT[method]} {show(speed)}x")
                for step in (s for s in run.steps if "error" in s):
                    print(f"    ! {method} {step['format']}: {step['error']}", flush=True)
            print(f"    {source.key:<13} {preset.name:<10} " + "  ".join(cells), flush=True)


# --- accuracy --------------------------------------------------------------------------------


def measure(path: Path, target_lufs: float) -> dict[str, Any]:
    """A rendition as the pipeline measures it (media.analyse: BS.1770, libebur128)."""
    try:
        found = media.analyse(path, LIMITS, waveform=False)
    except FAILURES as exc:
        return {"error": str(exc)}
    loud = found.loudness
    lufs = rounded(loud.integrated_lufs, 3)
    return {
        "integrated_lufs": lufs,
        "true_peak_dbtp": rounded(loud.true_peak_dbtp, 3),
        "lra_lu": rounded(loud.lra_lu),
        "sample_rate": found.sample_rate,
        "channels": found.channels,
        "duration_s": round(found.duration_s, 3),
        "size_bytes": path.stat().st_size,
        "lufs_error": None if lufs is None else round(lufs - target_lufs, 3),
    }


def measure_outputs(sources: list[Source], presets: list[Preset], outdir: Path) -> list[dict]:
    """The last round's renditions of (a), (b) and (d)."""
    rows = []
    for method, source, preset in itertools.product(DELIVERING, sources, presets):
        for name in preset.formats:
            path = output_path(outdir, method, source, preset, name)
            row = {"method": method, "source": source.key, "preset": preset.name, "format": name}
            row |= {"target_lufs": preset.target_lufs, "ceiling_dbtp": preset.ceiling_dbtp}
            rows.append(row | measure(path, preset.target_lufs))
    return rows


def accuracy_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How near the target and how far under the ceiling the renditions came."""
    errors = [abs(r["lufs_error"]) for r in rows if r.get("lufs_error") is not None]
    peaks = [r for r in rows if r.get("true_peak_dbtp") is not None]
    over = [r["true_peak_dbtp"] - r["ceiling_dbtp"] for r in peaks]
    return {
        "renditions": len(rows),
        "measured": len(errors),
        "failed": sum(1 for r in rows if "error" in r),
        "lufs_abs_error_max": rounded(max(errors, default=None)),
        "lufs_abs_error_mean": rounded(sum(errors) / len(errors) if errors else None),
        "within_1lu": sum(1 for e in errors if e <= encode.LOUDNESS_TOLERANCE_LU),
        "tp_at_or_below_ceiling": sum(1 for o in over if o <= 0),
        "tp_over_ceiling_max_db": rounded(max(over, default=None)),
        "sample_rates": sorted({r["sample_rate"] for r in rows if r.get("sample_rate")}),
    }


# --- report ----------------------------------------------------------------------------------


def show(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def summarize(runs: list[Run], sources: list[Source], presets: list[Preset]) -> dict[str, Any]:
    """summary[preset][source or "all"][method]: medians over the rounds in which it all ran;
    for (a) also the share of its time in analyse() and render()'s encodes in the last round."""
    durations = {s.key: s.duration_s for s in sources}
    rounds: dict[tuple[str, str, str], dict[int, list[Run]]] = {}
    for run in runs:
        for key in (run.source, "all"):
            group = rounds.setdefault((run.preset, key, run.method), {})
            group.setdefault(run.round, []).append(run)
    summary: dict[str, Any] = {}
    for preset, key, method in itertools.product(presets, [*durations, "all"], METHODS):
        by_round = list(rounds.get((preset.name, key, method), {}).values())
        ran = [group for group in by_round if all(r.ok for r in group)]
        audio = [sum(durations[r.source] for r in group) for group in ran]
        wall = [sum(r.wall_s for r in group) for group in ran]
        cpu = [sum(r.cpu_s for r in group) for group in ran]
        wall_x = [a / w for a, w in zip(audio, wall, strict=True)]
        cpu_x = [a / c if c > 0 else math.inf for a, c in zip(audio, cpu, strict=True)]
        cell = {"rounds_ok": len(ran), "x_realtime_wall": median(wall_x)}
        cell["x_realtime_cpu"] = median(cpu_x)
        cell["x_realtime_wall_per_round"] = [round(x, 2) for x in wall_x]
        if method == "pipeline":
            shares = [sum(r.analyse_s or 0 for r in g) / w for g, w in zip(ran, wall, strict=True)]
            last = by_round[-1] if by_round and key != "all" else []
            attempts = [str(s["attempts"]) for r in last for s in r.steps if "attempts" in s]
            cell |= {"analyse_share_of_wall": median(shares, 3), "encodes": "+".join(attempts)}
        summary.setdefault(preset.name, {}).setdefault(key, {})[method] = cell
    return summary


def table(title: str, header: str, rows: list[list[str]], footer: str) -> str:
    """A Markdown table (`header`: its column names, separated by |), a title and a footnote."""
    lines = [f"**{title}**", "", f"| {header} |", "|---" * len(header.split("|")) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows), "", footer])


def speed_table(summary: dict[str, Any]) -> str:
    rows = []
    for preset, per_source in summary.items():
        for key, cells in per_source.items():
            a, b, c, d = (cells[m]["x_realtime_wall"] for m in METHODS)
            ratios = [show(a / x if a and x else None, 2) for x in (b, d)]
            cpu = [show(cells[m]["x_realtime_cpu"]) for m in METHODS]
            ours = cells["pipeline"]
            share = ours["analyse_share_of_wall"]
            analyse = show(None if share is None else share * 100, 0) + "%"
            label = "all sources" if key == "all" else key
            speeds = [*map(show, (a, b, c, d)), *ratios, *cpu]
            rows.append([preset, label, *speeds, analyse, ours["encodes"]])
    return table(
        "SPEED: x realtime (seconds of source audio per second), median over rounds",
        "preset | source | (a) | (b) | (c) | (d) | a/b | a/d | CPU (a) | CPU (b) | CPU (c)"
        " | CPU (d) | analyse | encodes",
        rows,
        "(a)-(d): by wall clock; CPU: by CPU time (user+sys). a/b, a/d: (a)'s speed over (b)'s or"
        " (d)'s (below 1: our pipeline is slower). analyse: the share of (a)'s wall time spent in"
        " media.analyse() of the source. encodes: render()'s encodes per format, last round.",
    )


def accuracy_table(accuracy: dict[str, dict[str, dict[str, Any]]]) -> str:
    rows = []
    for method, groups in accuracy.items():
        for name in [*list(groups)[1:], "all"]:  # the presets, then all of them
            s, n = groups[name], groups[name]["measured"]
            loudness = [show(s["lufs_abs_error_max"], 2), show(s["lufs_abs_error_mean"], 2)]
            peaks = [f"{s['tp_at_or_below_ceiling']}/{n}", show(s["tp_over_ceiling_max_db"], 2)]
            rates = ",".join(map(str, s["sample_rates"]))
            counts = [SHORT[method], name, str(s["renditions"])]
            rows.append([*counts, *loudness, f"{s['within_1lu']}/{n}", *peaks, rates])
    return table(
        "ACCURACY of delivered renditions (media.analyse, BS.1770 / libebur128)",
        "method | preset | n | max abs dLU | mean abs dLU | within 1 LU | TP <= ceiling"
        " | max TP over ceiling (dB) | rates (Hz)",
        rows,
        "dLU: the integrated loudness's distance from the target (LU); TP: true peak.",
    )


def notes(runs: list[Run]) -> list[str]:
    """The steps that failed, and the modes loudnorm reported for (b)."""
    lines = [
        f"round {r.round} {r.method} {r.source} {r.preset} {s['format']}: {s['error']}"
        for r in runs
        for s in r.steps
        if "error" in s
    ]
    done = [s for r in runs if r.method == "loudnorm" for s in r.steps if "error" not in s]
    if modes := sorted({s["normalization_type"] or "?" for s in done}):
        lines.append(f"loudnorm normalization_type seen: {', '.join(modes)}")
    return lines


# --- output ----------------------------------------------------------------------------------


def results(
    args: argparse.Namespace, sources: list[Source], runs: list[Run], measured: list[dict]
) -> dict[str, Any]:
    """Everything measured, and what with."""
    presets = args.presets
    accuracy: dict[str, dict[str, Any]] = {method: {} for method in DELIVERING}
    for method, name in itertools.product(DELIVERING, ["all", *(p.name for p in presets)]):
        rows = [r for r in measured if r["method"] == method and name in ("all", r["preset"])]
        accuracy[method][name] = accuracy_stats(rows)
    version = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True, check=False)
    example = loudnorm_command(sources[0], presets[0], encode.FORMATS[presets[0].formats[0]])
    options = {"rounds": args.rounds, "program_seconds": args.program_seconds}
    options |= {"speech_seconds": args.speech_seconds, "presets": [p.name for p in presets]}
    return {
        "benchmark": "audio_speed",
        "started_utc": args.started.isoformat(timespec="seconds"),
        "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "host": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pyav": av.__version__,
            "ffmpeg": version.stdout.partition("\n")[0],
        },
        "options": options,
        "methods": METHOD_LABELS,
        "loudnorm_command_example": [Path(arg).name if "/" in arg else arg for arg in example],
        "presets": [p.as_dict() for p in presets],
        "formats": {name: list(f.codec_args) for name, f in encode.FORMATS.items()},
        "sources": [s.as_dict() for s in sources],
        "median": summarize(runs, sources, presets),
        "accuracy": accuracy,
        "renditions": measured,
        "notes": notes(runs),
        "runs": [{**asdict(r), "ok": r.ok} for r in runs],
    }


def markdown(args: argparse.Namespace, data: dict[str, Any]) -> str:
    when = f"{args.started:%Y-%m-%d %H:%M} UTC, {args.rounds} alternating rounds"
    parts = [f"# Audio benchmark ({when}, load average {os.getloadavg()[0]:.2f})"]
    parts += ["\n".join(f"- {label}" for label in METHOD_LABELS.values())]
    parts += [speed_table(data["median"])]
    if data["renditions"]:
        parts.append(accuracy_table(data["accuracy"]))
    if data["notes"]:
        parts.append("**NOTES**\n\n" + "\n".join(f"- {note}" for note in data["notes"]))
    return "\n\n".join(parts)


def plot(summary: dict[str, Any], rounds: int) -> Path:
    """Speed per preset and source, the methods side by side (x realtime, wall clock)."""
    groups = [(preset, key) for preset, per in summary.items() for key in per if key != "all"]
    fig, ax = pyplot().subplots(figsize=(12, 5))
    width, slots = 0.8 / len(METHODS), range(len(groups))
    for n, method in enumerate(METHODS):
        values = [summary[p][k][method]["x_realtime_wall"] or 0 for p, k in groups]
        ax.bar([i + n * width for i in slots], values, width, label=METHOD_LABELS[method][:44])
    ticks = [i + 0.4 - width / 2 for i in slots]
    ax.set_xticks(ticks, [f"{p}\n{k}" for p, k in groups], fontsize=8)
    ax.set_ylabel("x realtime (wall clock, median)")
    ax.set_title(f"audio: our pipeline vs the ffmpeg CLI, {rounds} alternating rounds")
    ax.legend(fontsize=8)
    return save_plot("audio_speed", fig)


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (a)-(d), 1 or more")
    parser.add_argument("--program-seconds", type=float, default=120.0, help="5 to 3600")
    parser.add_argument("--speech-seconds", type=float, default=60.0, help="at least; 5 to 3600")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated (all)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.presets.split(",") if name.strip()]
    if not names or not set(names) <= set(PRESETS):
        parser.error(f"unknown presets in {args.presets!r}; choose from {', '.join(PRESETS)}")
    if args.rounds < 1 or not all(
        5 <= s <= 3600 for s in (args.program_seconds, args.speech_seconds)
    ):
        parser.error("--rounds: 1 or more; --program-seconds, --speech-seconds: 5 to 3600")
    args.presets, args.started = [PRESETS[name] for name in names], dt.datetime.now(dt.UTC)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clock, sources, runs, measured = time.perf_counter(), [], [], []
    failure: BaseException | None = None
    with tempfile.TemporaryDirectory(prefix="audio_speed-") as tmp:
        try:
            print(f"Making sources in {tmp} ...", flush=True)
            sources = make_sources(Path(tmp), args.program_seconds, args.speech_seconds)
            print("\n".join(f"    {label}" for label in METHOD_LABELS.values()))
            bench(args, sources, Path(tmp) / "out", runs)
            print("\nMeasuring the renditions of the last round ...", flush=True)
            measured = measure_outputs(sources, args.presets, Path(tmp) / "out")
        except BaseException as exc:  # report what was measured, then fail
            failure = exc
    if runs:
        data = results(args, sources, runs, measured) | {"complete": failure is None}
        text = markdown(args, data)
        print(f"\n{text}\n\nTotal time {time.perf_counter() - clock:.0f} s")
        paths = [*write_results("audio_speed", data, text), plot(data["median"], args.rounds)]
        print("Results: " + ", ".join(str(path.relative_to(REPO_DIR)) for path in paths))
    if isinstance(failure, KeyboardInterrupt):
        return 130
    if failure is not None:
        raise failure
    return 0


if __name__ == "__main__":
    sys.exit(main())
