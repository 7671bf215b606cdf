"""Audio decoding: the in-memory 16-bit WAV path against libsndfile, and header durations."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from corpus_fixtures import _corrupt_bytes, speech_like
from serprep.audio import audio_duration, decode_bytes, load_audio, pcm16_wav
from serprep.errors import AudioError


def _wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format=fmt)
    return buf.getvalue()


def _with_chunk_before_data(data: bytes, chunk: bytes) -> bytes:
    """Insert an extra chunk (e.g. LIST, odd-sized with its pad byte) before ``data``."""
    pos = data.index(b"data")
    out = data[:pos] + chunk + data[pos:]
    return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("fmt", ["WAV", "WAVEX"])
def test_pcm16_is_decoded_exactly_as_libsndfile_does(channels, fmt):
    rng = np.random.default_rng(channels)
    x = rng.uniform(-1, 1, (4001, channels))
    x[:3] = [[-1.0] * channels, [1.0] * channels, [0.0] * channels]  # int16 extremes and zero
    data = _wav_bytes(x, 22050, fmt=fmt)
    samples, rate = pcm16_wav(data)
    ref, ref_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    assert rate == ref_rate == 22050 and samples.dtype == np.float32
    np.testing.assert_array_equal(samples, ref)


def test_extra_and_odd_sized_chunks_are_skipped():
    y = speech_like(8000, 16000, f0=140.0, formant_scale=1.0, seed=4, peak=0.5)
    data = _with_chunk_before_data(_wav_bytes(y, 16000), b"LIST" + struct.pack("<I", 5) + b"INFOx\x00")
    samples, _ = pcm16_wav(data)
    np.testing.assert_array_equal(samples, sf.read(io.BytesIO(data), dtype="float32", always_2d=True)[0])


@pytest.mark.parametrize("subtype", ["PCM_24", "PCM_32", "FLOAT", "PCM_U8", "ULAW"])
def test_other_encodings_go_to_libsndfile(subtype):
    x = np.random.default_rng(1).uniform(-0.9, 0.9, 3000)
    data = _wav_bytes(x, 16000, subtype=subtype)
    assert pcm16_wav(data) is None
    decoded = decode_bytes(data, "a.wav", 16000)
    np.testing.assert_array_equal(decoded.samples, sf.read(io.BytesIO(data), dtype="float32")[0])


def test_flac_and_truncated_wav_go_to_libsndfile():
    x = np.random.default_rng(2).uniform(-0.9, 0.9, 5000)
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="FLAC")
    assert pcm16_wav(buf.getvalue()) is None
    truncated = _wav_bytes(x, 16000)[:-1001]  # data chunk claims more than the file holds
    assert pcm16_wav(truncated) is None
    decoded = decode_bytes(truncated, "t.wav", 16000)  # libsndfile reads what is there
    assert len(decoded.samples) == (len(truncated) - 44) // 2


def test_broken_files_still_fail_with_the_file_named(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(_corrupt_bytes(np.random.default_rng(0)))
    with pytest.raises(AudioError, match=r"^bad\.wav: cannot decode audio"):
        load_audio(bad, 16000, name="bad.wav")
    empty = tmp_path / "empty.wav"
    empty.write_bytes(_wav_bytes(np.zeros(0), 16000))
    with pytest.raises(AudioError, match=r"^empty\.wav: audio has no samples"):
        load_audio(empty, 16000, name="empty.wav")


def test_header_durations_agree_with_libsndfile(tmp_path):
    cases = {
        "mono.wav": _wav_bytes(np.zeros(16123), 16000),
        "stereo_x.wav": _wav_bytes(np.zeros((9999, 2)), 44100, fmt="WAVEX"),
        "float.wav": _wav_bytes(np.zeros(7000), 8000, subtype="FLOAT"),
        "list.wav": _with_chunk_before_data(_wav_bytes(np.zeros(3200), 16000), b"LIST\x04\x00\x00\x00INFO"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        info = sf.info(str(tmp_path / name))
        assert audio_duration(tmp_path / name) == pytest.approx(info.frames / info.samplerate, abs=1e-12), name
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00")
    assert audio_duration(tmp_path / "junk.wav") is None
    assert audio_duration(tmp_path / "missing.wav") is None
