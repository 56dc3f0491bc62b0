"""An independent loudness meter: FFmpeg's `ebur128` filter, run by the FFmpeg CLI (the static
build imageio-ffmpeg ships in the test group, the benchmark's reference too). The project's meter
is libebur128 (pyebur128) fed by PyAV; this one shares neither the code nor the decoding path."""

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
SUMMARY = re.compile(
    r"Integrated loudness:\s+I:\s+(?P<i>-?[\d.]+|-inf) LUFS.*?"
    r"True peak:\s+Peak:\s+(?P<tp>-?[\d.]+|-inf) dBFS",
    re.S,
)


@dataclass(frozen=True)
class Reading:
    integrated_lufs: float
    true_peak_dbtp: float


def measure(path: Path) -> Reading:
    """Integrated loudness and true peak (4x oversampled) of the whole file."""
    result = subprocess.run(
        [
            FFMPEG,
            "-nostdin",
            "-hide_banner",
            "-nostats",
            "-i",
            str(path),
            "-af",
            "ebur128=peak=true",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    summary = SUMMARY.search(result.stderr.rsplit("Summary:", 1)[-1])
    assert summary, result.stderr[-2000:]
    return Reading(float(summary["i"]), float(summary["tp"]))
