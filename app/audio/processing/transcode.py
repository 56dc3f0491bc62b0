"""The encoder process: one audio file through gain and a true-peak limiter into one encoder,
all inside PyAV's FFmpeg (the filters and codecs the ffmpeg CLI would use), in a child process.

encode.py runs it as `python -I <this file> ...` (a script, not a module of the package: it
imports only PyAV and the standard library, numpy and pyebur128 too when measuring, so it starts
in a fraction of a second and never loads Django), under the same rlimits, kill-on-stop, timeout
and die-with-the-worker rules as an external encoder: a crash, a limit or a kill takes down this
process, never the worker.

    transcode.py SOURCE DEST --demuxer wav --gain-db 3.2 --limit 0.8414 --codec libmp3lame
        [--rate 44100] [--channels 2] [--max-channels 2]
        [--muxer mp3] [--option flags=+qscale ...] [--muxer-option movflags=+faststart ...]

DEST may be `pipe:1` (e.g. raw float PCM). With `--measure-gain` (repeatable) instead of DEST
and the codec, the process measures: one decode of the source feeds one gain + limiter chain per
gain (at the source's rate), and it prints the integrated loudness of each (LUFS, null when
silent) as a JSON list on stdout: a gain search in a single pass. Failures are one line on
stderr (FFmpeg's own reason: "File too large", "No space left on device", "Cannot allocate
memory") and exit status 1; SIGXCPU and SIGKILL end the process as they would any encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from fractions import Fraction
from typing import cast

import av

# The same as the ffmpeg CLI's -af: the gain, then a limiter that holds sample peaks at `limit`
# (linear), with no output make-up gain.
LIMITER = "limit={limit:.5f}:level=disabled:attack=5:release=50"
# Frames in flight between the decoding thread and the encoding one (a few hundred ms of audio).
PIPELINE_FRAMES = 32
DEMUXER_WHITELIST = "wav,flac,mp3,aac,mov,ogg,matroska"
# av_channel_layout_default(): the layout FFmpeg assumes for N channels with no layout.
DEFAULT_LAYOUTS = {
    1: "mono",
    2: "stereo",
    3: "2.1",
    4: "4.0",
    5: "5.0",
    6: "5.1",
    7: "6.1",
    8: "7.1",
}


def _pairs(values: Sequence[str]) -> dict[str, str]:
    options = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep:
            raise SystemExit(f"option {value!r} is not KEY=VALUE")
        options[key] = setting
    return options


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("dest", nargs="?", help="the output (not with --measure-gain)")
    parser.add_argument("--demuxer", required=True)
    parser.add_argument("--gain-db", type=float)
    parser.add_argument(
        "--measure-gain",
        type=float,
        action="append",
        default=[],
        help="measure the loudness at this gain (dB; repeatable) instead of encoding",
    )
    parser.add_argument("--limit", type=float, required=True, help="limiter level, linear")
    parser.add_argument(
        "--oversample",
        type=int,
        default=1,
        help="run the limiter at this multiple of the output rate (true peaks)",
    )
    parser.add_argument("--codec")
    parser.add_argument("--muxer")
    parser.add_argument("--rate", type=int, help="output sample rate (default: the source's)")
    parser.add_argument("--channels", type=int, help="output channels (default: the source's)")
    parser.add_argument("--max-channels", type=int, help="the encoder's most channels (downmix)")
    parser.add_argument("--option", action="append", default=[], help="codec option KEY=VALUE")
    parser.add_argument("--muxer-option", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args(argv)
    encoding = (args.dest, args.gain_db, args.codec, args.muxer)
    if args.measure_gain and any(value is not None for value in encoding):
        parser.error("--measure-gain takes no DEST, --gain-db, --codec or --muxer")
    if not args.measure_gain and any(value is None for value in encoding):
        parser.error("DEST, --gain-db, --codec and --muxer are required to encode")
    return args


def layout_name(channels: int) -> str:
    """FFmpeg's default layout for a channel count (a WAV without a channel mask has none)."""
    return DEFAULT_LAYOUTS.get(channels, f"{channels}c")


def encoder_format(codec: av.Codec) -> str:
    """The sample format the ffmpeg CLI gives this encoder after the limiter (whose output is
    double): the widest it takes, the first of equals (s32 FLAC, float Opus)."""
    formats = codec.audio_formats or ()
    return max(formats, key=lambda f: f.bytes).name if formats else "flt"


def _open(
    args: argparse.Namespace,
) -> tuple[av.container.InputContainer, av.audio.stream.AudioStream]:
    source = av.open(
        args.source,
        format=args.demuxer,
        options={
            "protocol_whitelist": "file",
            "format_whitelist": DEMUXER_WHITELIST,
        },
    )
    stream = next((s for s in source.streams if s.type == "audio"), None)
    if stream is None:
        source.close()
        raise ValueError("the file has no audio stream")
    return source, cast(av.audio.stream.AudioStream, stream)  # an audio stream


def transcode(args: argparse.Namespace) -> None:
    source, stream = _open(args)
    with source:
        decoder = stream.codec_context
        rate = args.rate or decoder.sample_rate
        channels = args.channels or decoder.channels
        if args.max_channels:
            channels = min(channels, args.max_channels)
        layout = layout_name(channels)
        with av.open(args.dest, "w", format=args.muxer, options=_pairs(args.muxer_option)) as out:
            ostream = out.add_stream(
                args.codec, rate=rate, layout=layout, options=_pairs(args.option)
            )
            encoder = ostream.codec_context
            encoder.format = encoder_format(encoder.codec)
            encoder.time_base = Fraction(1, rate)
            encoder.open()
            graph = _graph(stream, args, encoder, rate, layout)
            for frame in in_thread(_filtered(source, stream, graph)):
                for packet in encoder.encode(frame):
                    packet.stream = ostream
                    out.mux(packet)
            for packet in encoder.encode(None):
                packet.stream = ostream
                out.mux(packet)


def measure(args: argparse.Namespace) -> list[float | None]:
    """Integrated loudness (BS.1770, libebur128 as in media.analyse) of the source through each
    gain and the limiter, at the source's rate and channels: one decode feeds every chain."""
    import numpy as np  # only this mode needs them (encoding starts without)
    import pyebur128

    source, stream = _open(args)
    with source:
        decoder = stream.codec_context
        channels, rate = decoder.channels, decoder.sample_rate
        chains = [_measure_graph(stream, gain, args.limit) for gain in args.measure_gain]
        meters = [
            pyebur128.R128State(channels, rate, pyebur128.MeasurementMode.MODE_I) for _ in chains
        ]
        pushed = 0
        for frame in itertools.chain(source.decode(stream), [None]):
            if frame is not None:
                frame.pts, frame.time_base = pushed, Fraction(1, frame.sample_rate)
                pushed += frame.samples
            for graph, meter in zip(chains, meters, strict=True):
                graph.push(frame)  # a new reference each: the frame serves every chain
                for out in _drain(graph):
                    block = np.ascontiguousarray(out.to_ndarray().reshape(-1))
                    meter.add_frames(block, out.samples)
    found = [pyebur128.get_loudness_global(meter) for meter in meters]
    return [value if math.isfinite(value) else None for value in found]


def _measure_graph(
    stream: av.audio.stream.AudioStream, gain_db: float, limit: float
) -> av.filter.Graph:
    """The gain and the limiter as _graph() has them (no oversampling), out as packed float."""
    decoder = stream.codec_context
    graph = av.filter.Graph()
    graph.threads = 1
    chain = [
        graph.add_abuffer(
            sample_rate=decoder.sample_rate,
            format=decoder.format.name,
            layout=decoder.layout.name,
            time_base=Fraction(1, decoder.sample_rate),
        ),
        graph.add("volume", f"volume={gain_db:.3f}dB"),
        graph.add("alimiter", LIMITER.format(limit=limit)),
        graph.add("aformat", "sample_fmts=flt"),
        graph.add("abuffersink"),
    ]
    for upstream, downstream in itertools.pairwise(chain):
        upstream.link_to(downstream)
    graph.configure()
    return graph


def _graph(
    stream: av.audio.stream.AudioStream,
    args: argparse.Namespace,
    encoder: av.audio.codeccontext.AudioCodecContext,
    rate: int,
    layout: str,
) -> av.filter.Graph:
    decoder = stream.codec_context
    graph = av.filter.Graph()
    graph.threads = 1  # audio filters here do not thread; one thread keeps the memory bound
    source = graph.add_abuffer(
        sample_rate=decoder.sample_rate,
        format=decoder.format.name,
        layout=decoder.layout.name,
        time_base=Fraction(1, decoder.sample_rate),
    )
    # The encoder's sample format, rate and layout: FFmpeg inserts the resampler it needs.
    negotiate = f"sample_fmts={encoder.format.name}:sample_rates={rate}:channel_layouts={layout}"
    limiter = [graph.add("alimiter", LIMITER.format(limit=args.limit))]
    if args.oversample > 1:
        # A true-peak limiter: the output rate first (its inter-sample peaks are the ones that
        # count), then the limiter on N times as many samples, which holds the peaks between
        # the output's samples too, and back down.
        limiter = [
            graph.add("aresample", f"{rate}"),
            graph.add("aresample", f"{rate * args.oversample}"),
            *limiter,
            graph.add("aresample", f"{rate}"),
        ]
    chain = [
        source,
        graph.add("volume", f"volume={args.gain_db:.3f}dB"),
        *limiter,
        graph.add("aformat", negotiate),
        graph.add("abuffersink"),
    ]
    for upstream, downstream in itertools.pairwise(chain):
        upstream.link_to(downstream)
    graph.configure()
    if encoder.frame_size:  # encoders with a fixed frame size (MP3, AAC, Opus, FLAC here)
        graph.set_audio_frame_size(encoder.frame_size)
    return graph


def _filtered(
    source: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    graph: av.filter.Graph,
) -> Iterator[av.AudioFrame]:
    """The source's frames through the graph, timestamped by sample count (in and out)."""
    pushed = pulled = 0
    frames = source.decode(stream)
    while True:
        frame = next(frames, None)
        if frame is not None:
            frame.pts, frame.time_base = pushed, Fraction(1, frame.sample_rate)
            pushed += frame.samples
        graph.push(frame)
        for out in _drain(graph):
            out.pts = pulled
            pulled += out.samples
            yield out
        if frame is None:
            return


def in_thread[T](items: Iterator[T], depth: int = PIPELINE_FRAMES) -> Iterator[T]:
    """`items`, made in a thread of their own while the caller uses the ones before: here the
    decoder and filters on one core, the encoder and muxer on another, as the ffmpeg CLI runs
    them; in media.analyse() the decoding beside the meter (FFmpeg's work happens without the
    GIL). Nothing but the items crosses over. Their exceptions are raised here; when the caller
    stops early, the thread stops too."""
    handoff: queue.Queue[tuple[T] | BaseException | None] = queue.Queue(depth)
    stopping = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stopping.is_set():
                    try:
                        handoff.put((item,), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                else:
                    return
            handoff.put(None)
        except BaseException as exc:  # MemoryError, a decoding error: raised on the caller's side
            handoff.put(exc)

    producer = threading.Thread(target=produce, name="decode", daemon=True)
    producer.start()
    try:
        while (got := handoff.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            yield got[0]
    finally:  # done, or the caller failed: let the producer see it and end
        stopping.set()
        while producer.is_alive():
            with contextlib.suppress(queue.Empty):
                handoff.get(timeout=0.1)
        producer.join()


def _drain(graph: av.filter.Graph) -> Iterator[av.AudioFrame]:
    while True:
        try:
            yield cast(av.AudioFrame, graph.pull())  # an audio-only graph
        except (av.BlockingIOError, av.EOFError):
            return


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.measure_gain:
            print(json.dumps(measure(args)))
        else:
            transcode(args)
    except MemoryError:
        print("Cannot allocate memory", file=sys.stderr)
        return 1
    except (av.FFmpegError, OSError, ValueError) as exc:
        print(_reason(exc), file=sys.stderr)
        return 1
    return 0


def _reason(exc: Exception) -> str:
    """One line: FFmpeg's (or the OS's) reason, without the file name."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split())


if __name__ == "__main__":
    sys.exit(main())
