"""Audio processing against real decoders and encoders (PyAV/FFmpeg, libebur128, the encoder
process)."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from audio.presets import PRESETS
from audio.processing import encode, media, transcode
from testing import signals
from tests import reference_meter
from tests.stack_env import REPO_DIR

LIMITS = media.Limits(max_duration_s=600)
APP_DIR = REPO_DIR / "app"


def render_preset(source, analysis, preset, directory):
    """Each of the preset's formats rendered from `source`: (format name, rendition)."""
    for name in preset.formats:
        fmt = encode.FORMATS[name]
        yield (
            name,
            encode.render(
                source,
                analysis,
                fmt,
                directory / f"out.{fmt.extension}",
                target_lufs=preset.target_lufs,
                ceiling_dbtp=preset.ceiling_dbtp,
                limits=LIMITS,
            ),
        )


@pytest.mark.parametrize(
    ("dbfs", "channels", "expected"), [(-18, 2, -18.0), (-23, 2, -23.0), (-18, 1, -21.01)]
)
def test_loudness_is_accurate_on_calibrated_tones(tmp_path, dbfs, channels, expected) -> None:
    path = signals.write(tmp_path / "tone.wav", signals.tone(20, dbfs, channels))
    loudness = media.analyse(path, LIMITS).loudness
    assert loudness.integrated_lufs == pytest.approx(expected, abs=0.1)
    assert loudness.true_peak_dbtp == pytest.approx(dbfs, abs=0.1)


@pytest.mark.parametrize("kind", sorted(signals.FORMATS))
def test_every_accepted_format_is_decoded_and_measured(tmp_path, kind) -> None:
    ext = signals.FORMATS[kind][2]
    path = signals.write(tmp_path / f"tone.{ext}", signals.tone(8, -18, 2))
    analysis = media.analyse(path, LIMITS)
    assert analysis.duration_s == pytest.approx(8, abs=0.1)
    assert analysis.channels == 2
    assert analysis.loudness.integrated_lufs == pytest.approx(-18, abs=0.3)
    assert analysis.waveform is not None and len(analysis.waveform.data) >= 2 * 8 * 20


def test_waveform_matches_the_audiowaveform_format(tmp_path) -> None:
    path = signals.write(tmp_path / "tone.wav", signals.tone(3, -6, 2))
    waveform = media.analyse(path, LIMITS).waveform
    data = waveform.as_audiowaveform_json()
    assert {k: data[k] for k in ("version", "channels", "bits")} == {
        "version": 2,
        "channels": 1,
        "bits": 8,
    }
    assert data["samples_per_pixel"] == signals.RATE // 20
    assert data["length"] == 60 and len(data["data"]) == 120
    peak = int(10 ** (-6 / 20) * 32767) // 256
    assert max(data["data"]) == peak and min(data["data"]) == -peak
    dat = waveform.as_audiowaveform_dat()
    header = np.frombuffer(dat[:24], dtype="<i4")
    assert list(header) == [2, 1, signals.RATE, signals.RATE // 20, 60, 1]
    assert list(np.frombuffer(dat[24:], dtype=np.int8)) == data["data"]
    json.dumps(data)


@pytest.mark.parametrize("preset_name", sorted(PRESETS))
@pytest.mark.parametrize("material", ["tone", "program", "speech"])
def test_renditions_reach_the_target_under_the_ceiling(tmp_path, preset_name, material) -> None:
    if material == "speech":
        text = "Loudness normalisation keeps every episode at the same level. Listeners relax."
        source = signals.speech(text, tmp_path / "s.wav")
    else:
        samples = signals.tone(10, -30, 2) if material == "tone" else signals.program(12)
        source = signals.write(tmp_path / "in.wav", samples)
    preset = PRESETS[preset_name]
    analysis = media.analyse(source, LIMITS)
    for name, rendition in render_preset(source, analysis, preset, tmp_path):
        loud = rendition.loudness
        assert rendition.within_target, (name, loud, rendition.note)
        assert abs(loud.integrated_lufs - preset.target_lufs) <= 1.0, (name, loud)
        assert loud.true_peak_dbtp <= preset.ceiling_dbtp, (name, loud)
        assert_reference_meter_agrees(rendition, preset)


def assert_reference_meter_agrees(rendition: encode.Rendition, preset) -> None:
    """FFmpeg's ebur128 filter (decoding with FFmpeg's CLI, measuring with its own code) reads
    the delivered file within the promise too. It prints one decimal and oversamples with its own
    filter, so its true peak may sit up to 0.1 dB above the project's reading."""
    reference = reference_meter.measure(rendition.path)
    name = rendition.format.name
    assert abs(reference.integrated_lufs - preset.target_lufs) <= 1.0, (name, reference)
    assert reference.true_peak_dbtp <= preset.ceiling_dbtp + 0.1, (name, reference)
    assert abs(reference.integrated_lufs - rendition.loudness.integrated_lufs) <= 0.2, (
        name,
        reference,
        rendition.loudness,
    )


def test_a_click_train_is_too_dynamic_and_the_rendition_says_so(tmp_path) -> None:
    """Single-sample clicks a second apart read about -40 LUFS with peaks at 0 dBFS: the gain to
    -16 LUFS lifts every click into the limiter, which holds them at its level, so no gain reaches
    the target under the ceiling. The rendition is delivered nearest to the promise, with a note."""
    samples = np.zeros((signals.RATE * 10, 2))
    samples[:: signals.RATE] = 0.99
    source = signals.write(tmp_path / "clicks.wav", samples)
    analysis = media.analyse(source, LIMITS)
    rendition = render_mp3(source, analysis, tmp_path / "out.mp3")
    assert not rendition.within_target, rendition
    assert "too dynamic" in rendition.note, rendition.note
    assert rendition.loudness.integrated_lufs < -17, rendition.loudness
    assert rendition.loudness.true_peak_dbtp <= -1, rendition.loudness


def test_limited_speech_gets_its_gain_from_raw_pcm_and_encodes_once(tmp_path) -> None:
    """Speech raised by several dB runs into the limiter, which takes loudness away: the search
    on raw PCM finds the gain that survives it, so the rendition lands on its first encode
    (without the search this needs two)."""
    text = "Loudness normalisation keeps every episode at the same level. Listeners relax."
    source = signals.speech(text, tmp_path / "s.wav")
    analysis = media.analyse(source, LIMITS)
    preset = PRESETS["streaming"]
    planned = encode.plan_gain(analysis.loudness, preset.target_lufs)
    limit = preset.ceiling_dbtp - 0.5
    assert analysis.loudness.true_peak_dbtp + planned > limit  # the limiter will act
    found = encode.limited_gain(source, analysis, planned, limit, preset.target_lufs)
    assert found > planned + 0.2, (planned, found)  # limiting cost loudness: more gain
    after = encode._pcm_loudness(transcode.decoded(str(source), "wav"), found, limit, lambda: False)
    assert abs(after - preset.target_lufs) <= encode.SETTLE_LU, after  # render's own criterion
    rendition = encode.render(
        source,
        analysis,
        encode.FORMATS["flac"],
        tmp_path / "out.flac",
        target_lufs=preset.target_lufs,
        ceiling_dbtp=preset.ceiling_dbtp,
        limits=LIMITS,
    )
    assert rendition.within_target and rendition.encodes == 1, rendition


def long_speech(tmp_path, kind: str) -> tuple:
    """About 40 s of espeak-ng speech (mono 22.05 kHz) as `kind`, and its analysis."""
    clips = []
    for index, text in enumerate(signals.SPEECH_TEXTS):
        with av.open(str(signals.speech(text, tmp_path / f"s{index}.wav"))) as wav:
            clips += [f.to_ndarray().reshape(-1, 1) for f in wav.decode(audio=0)]
    samples = np.concatenate(clips).astype(np.float32) / 32768
    source = signals.write(tmp_path / f"speech.{kind}", samples, kind, rate=22050)
    return source, media.analyse(source, LIMITS)


def test_the_oversampled_limiter_holds_true_peaks(tmp_path) -> None:
    """Speech at 22.05 kHz raised 10 dB into the limiter: at the source's rate the limiter holds
    sample peaks only and the 48 kHz output's true peak ends up well over its level; run at 4x
    the output rate it holds the true peak."""
    source, _ = long_speech(tmp_path, "wav")
    wav = encode.Format("wav", "wav", "audio/wav", "pcm_f32le", "wav", 48000)
    peaks = {}
    for oversample in (1, encode.OVERSAMPLE):
        out = tmp_path / f"limited{oversample}.wav"
        encode._encode(
            source, "wav", out, wav, gain_db=11, limit_dbfs=-2, limits=LIMITS, oversample=oversample
        )
        peaks[oversample] = media.analyse(out, LIMITS, waveform=False).loudness.true_peak_dbtp
    assert peaks[encode.OVERSAMPLE] <= -2 + 0.1, peaks
    assert peaks[1] > -2 + 0.3, peaks  # why it is there


@pytest.mark.parametrize("kind", ["flac", "mp3"])
def test_streaming_speech_takes_one_encode_per_format_under_the_ceiling(tmp_path, kind) -> None:
    """Streaming lifts speech 10+ dB into the limiter; Opus and AAC then add to its true peak.
    The limiter holds true peaks (oversampled) and sits under the ceiling by the encoder's
    headroom, so each rendition lands on its first encode (it took up to 4 before)."""
    source, analysis = long_speech(tmp_path, kind)
    preset = PRESETS["streaming"]
    assert encode.limiting(
        analysis, preset.target_lufs - analysis.loudness.integrated_lufs, preset.ceiling_dbtp - 0.5
    )
    for name, rendition in render_preset(source, analysis, preset, tmp_path):
        loud = rendition.loudness
        assert rendition.within_target and rendition.encodes == 1, (name, rendition)
        assert abs(loud.integrated_lufs - preset.target_lufs) <= encode.SETTLE_LU, (name, loud)
        assert loud.true_peak_dbtp <= preset.ceiling_dbtp, (name, loud)


@pytest.mark.parametrize("skew_db", [0, -3])
def test_the_gain_search_measures_an_excerpt_only_where_it_stands_for_the_whole(
    tmp_path, skew_db: float
) -> None:
    """On a file of several periods the search decodes a quarter of it once (2 s of every 8)
    and measures only that: the limiter's loss it sees there, added to the whole file's own
    loudness, gives a gain that brings the whole file to the target. Speech quieter by 3 dB
    outside those 2 s makes the excerpt unlike the whole (its loss would mislead the search by
    1.5 LU): then the search measures the whole file."""
    clips = []
    for index, text in enumerate(signals.SPEECH_TEXTS):
        with av.open(str(signals.speech(text, tmp_path / f"s{index}.wav"))) as wav:
            clips += [f.to_ndarray().reshape(-1, 1) for f in wav.decode(audio=0)]
    samples = np.concatenate(clips).astype(np.float32) / 32768
    rate = 22050
    in_excerpt = np.arange(len(samples)) % int(encode.EXCERPT_PERIOD_S * rate) < 2 * rate
    samples *= np.where(in_excerpt, 1.0, 10 ** (skew_db / 20)).astype(np.float32)[:, None]
    source = signals.write(tmp_path / "speech.mp3", samples, "mp3", rate=rate)
    analysis = media.analyse(source, LIMITS)
    preset = PRESETS["streaming"]
    planned = encode.plan_gain(analysis.loudness, preset.target_lufs)
    limit = preset.ceiling_dbtp - 1.0
    encode._search = None
    found = encode.limited_gain(source, analysis, planned, limit, preset.target_lufs)
    excerpt = encode._search.frames
    if skew_db:
        assert excerpt is None, encode._search.offset_lu  # the whole file instead
    else:
        share = sum(frame.samples for frame in excerpt) / analysis.samples
        assert 0.2 <= share <= 0.3, share
    whole = transcode.decoded(str(source), "mp3")
    after = encode._pcm_loudness(whole, found, limit, lambda: False)
    assert abs(after - preset.target_lufs) <= encode.SETTLE_LU, (planned, found, after)


def test_audio_the_limiter_leaves_alone_needs_no_search(tmp_path, monkeypatch) -> None:
    source = signals.write(tmp_path / "quiet.wav", signals.tone(10, -30, 2))
    analysis = media.analyse(source, LIMITS)
    planned = encode.plan_gain(analysis.loudness, -16)

    def no_search(*args: object) -> float:
        raise AssertionError("searched although the limiter would not act")

    monkeypatch.setattr(encode, "_pcm_loudness", no_search)
    assert encode.limited_gain(source, analysis, planned, -1.5, -16) == planned


def test_silence_is_not_normalised_and_says_why(tmp_path) -> None:
    source = signals.write(tmp_path / "silence.wav", np.zeros((48_000 * 3, 2)))
    analysis = media.analyse(source, LIMITS)
    assert analysis.loudness.integrated_lufs is None
    rendition = render_mp3(source, analysis, tmp_path / "out.mp3")
    assert not rendition.within_target
    assert "silent" in rendition.note


def test_tags_are_sanitised(tmp_path) -> None:
    hostile = {
        "title": "<script>alert(1)</script>\u202eevil\r\nInjected: yes\x00",
        "comment": "x" * 100_000,
    }
    path = signals.write(tmp_path / "tags.flac", signals.tone(1, -18, 2), "flac", metadata=hostile)
    tags = media.analyse(path, LIMITS).source_metadata()["tags"]
    assert (
        "\u202e" not in tags["title"] and "\r" not in tags["title"] and "\x00" not in tags["title"]
    )
    assert tags["title"].startswith("<script>")  # kept as text; escaped where it is shown
    assert len(tags["comment"]) <= media.TAG_MAX_CHARS


def render_podcast_mp3(tmp_path, seconds: float, limits: media.Limits) -> encode.Rendition:
    source = signals.write(tmp_path / "long.wav", signals.program(seconds))
    analysis = media.analyse(source, LIMITS, waveform=False)
    return render_mp3(source, analysis, tmp_path / "out" / "r.mp3", limits)


def render_mp3(source, analysis, dest, limits: media.Limits = LIMITS) -> encode.Rendition:
    """An MP3 at the podcast preset's target (-16 LUFS) and ceiling (-1 dBTP)."""
    return encode.render(
        source,
        analysis,
        encode.FORMATS["mp3"],
        dest,
        target_lufs=-16,
        ceiling_dbtp=-1,
        limits=limits,
    )


@pytest.mark.parametrize(
    ("limit", "reason"),
    [
        ({"max_output_bytes": 64 * 1024}, "larger than the 0 MB limit"),
        ({"encoder_cpu_s": 1}, "more than its 1 s of CPU time"),
        ({"encoder_memory_bytes": 32 * 2**20}, "needed more than its 32 MB of memory"),
    ],
    ids=["output size", "cpu time", "memory"],
)
def test_the_encoder_runs_under_rlimits_and_leaves_no_file(tmp_path, limit, reason) -> None:
    (tmp_path / "out").mkdir()
    seconds = 240 if "encoder_cpu_s" in limit else 20  # 240 s of MP3 take well over 1 s of CPU
    with pytest.raises(media.InvalidAudio, match=reason):
        render_podcast_mp3(tmp_path, seconds, media.Limits(max_duration_s=600, **limit))
    assert list((tmp_path / "out").iterdir()) == []  # no partial rendition, no attempt file


def test_the_same_encode_passes_within_the_default_limits(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    rendition = render_podcast_mp3(tmp_path, 20, media.Limits(max_duration_s=600))
    assert rendition.within_target and rendition.path.stat().st_size > 64 * 1024


def test_worker_processes_get_an_address_space_limit() -> None:
    """The worker_process_init hook, in a fresh process: allocating past it is a MemoryError
    (a job decoding such a file fails, saying so), not a machine out of memory."""
    code = (
        "import django; django.setup()\n"
        "from core.celery import limit_worker_memory\n"
        "limit_worker_memory()\n"
        "try:\n    bytearray(300 * 2**20)\nexcept MemoryError:\n    print('MemoryError')\n"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "core.settings", "AUDIO_WORKER_MEMORY_MB": "256"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=APP_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "MemoryError", result.stderr


@pytest.mark.parametrize("channels", [1, 2, 6])
def test_the_encoder_process_keeps_the_cli_encoders_settings(tmp_path, channels) -> None:
    """What the ffmpeg CLI did with the same settings: the source's layout where the encoder
    takes it (LAME takes at most stereo: downmixed), FLAC at 24 bits (s32), MP3 at 44.1 kHz."""
    layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    mono = signals.program(8)[:, :1].astype(np.float32)
    source = tmp_path / "in.wav"
    with av.open(str(source), "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=signals.RATE, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.tile(mono, (1, channels)).reshape(1, -1), format="flt", layout=layout
        )
        frame.sample_rate = signals.RATE
        resampler = av.AudioResampler(format="s16", layout=layout, rate=signals.RATE)
        for chunk in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(chunk):
                out.mux(packet)
    analysis = media.analyse(source, LIMITS)
    expected = {
        "mp3": (min(channels, 2), 44100, None),
        "aac": (channels, 48000, None),
        "opus": (channels, 48000, None),
        "flac": (channels, signals.RATE, 24),
    }
    for name, (want_channels, want_rate, want_bits) in expected.items():
        fmt = encode.FORMATS[name]
        rendition = encode.render(
            source,
            analysis,
            fmt,
            tmp_path / f"out.{fmt.extension}",
            target_lufs=-16,
            ceiling_dbtp=-1,
            limits=LIMITS,
        )
        assert rendition.within_target, (name, rendition)
        with av.open(str(rendition.path)) as made:
            decoded = made.streams.audio[0].codec_context
            assert (decoded.channels, decoded.sample_rate) == (want_channels, want_rate), name
            if want_bits:
                assert decoded.bits_per_raw_sample == want_bits, name
