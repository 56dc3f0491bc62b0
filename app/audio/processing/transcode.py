"""The encoder process: one audio file through gain and a true-peak limiter into one encoder,
all inside PyAV's FFmpeg (the filters and codecs the ffmpeg CLI would use), in a child process.

encode.py runs it as `python -I <this file> ...` (a script, not a module of the package: it
imports only PyAV and the standard library, so it starts in a fraction of a second and never
loads Django), under the same rlimits, kill-on-stop, timeout and die-with-the-worker rules as an
external encoder: a crash, a limit or a kill takes down this process, never the worker.

    transcode.py SOURCE DEST --demuxer wav --gain-db 3.2 --limit 0.8414 --codec libmp3lame
        [--rate 44100] [--channels 2] [--max-channels 2]
        [--muxer mp3] [--option flags=+qscale ...] [--muxer-option movflags=+faststart ...]

DEST may be `pipe:1`. encode.py also imports decoded(), excerpt() and limited() (the same filters,
in its own process). Failures are one line on stderr (FFmpeg's own reason: "File too large",
"No space left on device", "Cannot allocate memory") and exit status 1; SIGXCPU and SIGKILL end
the process as they would any encoder.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from fractions import Fraction
from typing import cast

import av

# The same as the ffmpeg CLI's -af: the gain, then a limiter that holds sample peaks at `limit`
# (linear), with no output make-up gain.
LIMITER = "limit={limit:.5f}:level=disabled:attack=5:release=50"
DEMUXER_WHITELIST = "wav,flac,mp3,aac,mov,ogg,matroska"
# limited()'s frames: a few large ones cost less Python than the decoder's ~1,000-sample ones.
SEARCH_FRAME = 16384
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
    parser.add_argument("dest")
    parser.add_argument("--demuxer", required=True)
    parser.add_argument("--gain-db", type=float, required=True)
    parser.add_argument("--limit", type=float, required=True, help="limiter level, linear")
    parser.add_argument(
        "--oversample",
        type=int,
        default=1,
        help="run the limiter at this multiple of the output rate (true peaks)",
    )
    parser.add_argument("--codec", required=True)
    parser.add_argument("--muxer", required=True)
    parser.add_argument("--rate", type=int, help="output sample rate (default: the source's)")
    parser.add_argument("--channels", type=int, help="output channels (default: the source's)")
    parser.add_argument("--max-channels", type=int, help="the encoder's most channels (downmix)")
    parser.add_argument("--option", action="append", default=[], help="codec option KEY=VALUE")
    parser.add_argument("--muxer-option", action="append", default=[], help="KEY=VALUE")
    return parser.parse_args(argv)


def layout_name(channels: int) -> str:
    """FFmpeg's default layout for a channel count (a WAV without a channel mask has none)."""
    return DEFAULT_LAYOUTS.get(channels, f"{channels}c")


def encoder_format(codec: av.Codec) -> str:
    """The sample format the ffmpeg CLI gives this encoder after the limiter (whose output is
    double): the widest it takes, the first of equals (s32 FLAC, float Opus)."""
    formats = codec.audio_formats or ()
    return max(formats, key=lambda f: f.bytes).name if formats else "flt"


def _open_source(path: str, demuxer: str) -> av.container.InputContainer:
    return av.open(
        path,
        format=demuxer,
        options={
            "protocol_whitelist": "file",
            "format_whitelist": DEMUXER_WHITELIST,
        },
    )


def _audio_stream(source: av.container.InputContainer) -> av.audio.stream.AudioStream:
    stream = next((s for s in source.streams if s.type == "audio"), None)
    if stream is None:
        raise ValueError("the file has no audio stream")
    return cast(av.audio.stream.AudioStream, stream)


def transcode(args: argparse.Namespace) -> None:
    source = _open_source(args.source, args.demuxer)
    with source:
        stream = _audio_stream(source)
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
            graph = _graph(
                decoder,
                args.gain_db,
                args.limit,
                args.oversample,
                encoder.format.name,
                rate,
                layout,
                encoder.frame_size,
            )
            for frame in _filtered(source.decode(stream), graph):
                for packet in encoder.encode(frame):
                    packet.stream = ostream
                    out.mux(packet)
            for packet in encoder.encode(None):
                packet.stream = ostream
                out.mux(packet)


def decoded(path: str, demuxer: str) -> Iterator[av.AudioFrame]:
    """The source's first audio stream, decoded frame by frame."""
    source = _open_source(path, demuxer)
    with source:
        yield from source.decode(_audio_stream(source))


def excerpt(path: str, demuxer: str, chunk: int, period: int) -> list[av.AudioFrame]:
    """The decoded frames that start within the first `chunk` samples of every `period` (a
    sample spread over the whole file), kept in memory for limited()."""
    kept, start = [], 0
    for frame in decoded(path, demuxer):
        if start % period < chunk:
            kept.append(frame)
        start += frame.samples
    return kept


def limited(
    frames: Iterable[av.AudioFrame], gain_db: float, limit: float
) -> Iterator[av.AudioFrame]:
    """Decoded frames (excerpt()'s or decoded()'s) through the gain and the limiter (not
    oversampled) at their own rate, as packed float frames of SEARCH_FRAME samples: encode.py
    measures them in its own process, where media.analyse() has already decoded the same file
    (a child process's start-up was half of each measurement)."""
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        return
    rate, layout = first.sample_rate, layout_name(len(first.layout.channels))
    graph = _graph(first, gain_db, limit, 1, "flt", rate, layout, SEARCH_FRAME)
    yield from _filtered(itertools.chain([first], frames), graph)


def _graph(
    source_format: av.AudioFrame | av.audio.codeccontext.AudioCodecContext,
    gain_db: float,
    limit: float,
    oversample: int,
    sample_format: str,
    rate: int,
    layout: str,
    frame_size: int | None,
) -> av.filter.Graph:
    graph = av.filter.Graph()
    graph.threads = 1  # audio filters here do not thread; one thread keeps the memory bound
    source = graph.add_abuffer(
        sample_rate=source_format.sample_rate,
        format=source_format.format.name,
        layout=source_format.layout.name,
        time_base=Fraction(1, source_format.sample_rate),
    )
    # The encoder's sample format, rate and layout: FFmpeg inserts the resampler it needs.
    negotiate = f"sample_fmts={sample_format}:sample_rates={rate}:channel_layouts={layout}"
    limiter = [graph.add("alimiter", LIMITER.format(limit=limit))]
    if oversample > 1:
        # A true-peak limiter: the output rate first (its inter-sample peaks are the ones that
        # count), then the limiter on N times as many samples, which holds the peaks between
        # the output's samples too, and back down.
        limiter = [
            graph.add("aresample", f"{rate}"),
            graph.add("aresample", f"{rate * oversample}"),
            *limiter,
            graph.add("aresample", f"{rate}"),
        ]
    chain = [
        source,
        graph.add("volume", f"volume={gain_db:.3f}dB"),
        *limiter,
        graph.add("aformat", negotiate),
        graph.add("abuffersink"),
    ]
    for upstream, downstream in itertools.pairwise(chain):
        upstream.link_to(downstream)
    graph.configure()
    if frame_size:  # an encoder's fixed frame size (MP3, AAC, Opus, FLAC here), or limited()'s
        graph.set_audio_frame_size(frame_size)
    return graph


def _filtered(frames: Iterator[av.AudioFrame], graph: av.filter.Graph) -> Iterator[av.AudioFrame]:
    """The frames through the graph, timestamped by sample count (in and out)."""
    pushed = pulled = 0
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


def _drain(graph: av.filter.Graph) -> Iterator[av.AudioFrame]:
    while True:
        try:
            yield cast(av.AudioFrame, graph.pull())  # an audio-only graph
        except (av.BlockingIOError, av.EOFError):
            return


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
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
