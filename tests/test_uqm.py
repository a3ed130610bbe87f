"""Tests of the real-speech corpus from Debian's uqm-voice (scripts/build_uqm.py)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data import read_manifest
from asr.text import normalize
from scripts import build_uqm

SR = build_uqm.SAMPLE_RATE

# As the packages write them: the content package's text with a space before the ogg, the voice pack's
# timings in milliseconds for every line but the last.
DIALOGUE = """#(HELLO_1) utwig-000.ogg
Ugh. I suppose, as a courtesy, I should extend an appropriate greeting.
On behalf of the Utwig Proctors I truly hope
that your day has been better than ours.

#(NO_VOICE)
A line that no recording says.

#(FRACTION)\tutwig-001.ogg
Well, actually 2/3 of our civilization has been decimated.
"""
TIMINGS = "#(HELLO_1) 2000,1500\n#(NO_VOICE) \n#(FRACTION) \n"


def speech_with_gaps(parts: list[float], gap: float = 0.2) -> tuple[np.ndarray, list[float]]:
    """Noise bursts of the given lengths with silent gaps between them; returns audio and gap centres."""
    rng = np.random.default_rng(0)
    pieces, centres, t = [], [], 0.0
    for i, seconds in enumerate(parts):
        pieces.append(0.3 * rng.standard_normal(round(seconds * SR)))
        t += seconds
        if i < len(parts) - 1:
            pieces.append(np.zeros(round(gap * SR)))
            centres.append(t + gap / 2)
            t += gap
    return np.concatenate(pieces).astype(np.float32), centres


def test_dialogue_and_timings_are_parsed_as_the_packages_write_them():
    dialogue = build_uqm.parse_dialogue(DIALOGUE)
    assert set(dialogue) == {"HELLO_1", "FRACTION"}  # no ogg, no clip
    ogg, lines = dialogue["HELLO_1"]
    assert ogg == "utwig-000.ogg" and len(lines) == 3
    assert lines[2] == "that your day has been better than ours."
    assert dialogue["FRACTION"][0] == "utwig-001.ogg"  # a tab works as well as a space
    assert build_uqm.parse_timings(TIMINGS) == {"HELLO_1": (2.0, 1.5), "NO_VOICE": (), "FRACTION": ()}


def test_cuts_move_to_the_pause_nearest_the_subtitle_timing():
    samples, gaps = speech_with_gaps([2.0, 1.7, 1.0])
    # The timings are off by up to 0.15 s, as hand-made subtitle timings are.
    cuts = build_uqm.cut_points(samples, (2.15, 1.6))
    assert [abs(c / SR - g) < 0.1 for c, g in zip(cuts, gaps, strict=True)] == [True, True]
    assert build_uqm.cut_points(samples, (4.0, 3.0)) is None  # timings past the end of the audio


def test_a_clip_becomes_pieces_with_the_text_of_their_lines():
    samples, _ = speech_with_gaps([2.0, 1.7, 1.0])
    lines = ("Ugh. I suppose so.", "On behalf of the Utwig Proctors", "that your day is `better' than ours.")
    clip = build_uqm.Clip("utwig", "3dovoice/utwig/utwig-000.ogg", lines, (2.1, 1.8))
    pieces, left_out = build_uqm.pieces(clip, samples)
    assert not left_out
    assert len(pieces) == 1  # 5.1 s: the three lines fit in one piece
    assert pieces[0][2] == normalize(" ".join(lines)) and pieces[0][:2] == (0, samples.size)

    long_samples, _ = speech_with_gaps([9.0, 8.0, 1.0])
    pieces, _ = build_uqm.pieces(build_uqm.Clip("utwig", "x.ogg", lines, (9.1, 8.2)), long_samples)
    assert [p[2] for p in pieces] == [normalize(lines[0]), normalize(" ".join(lines[1:]))]
    assert all((b - a) / SR <= build_uqm.MAX_SECONDS for a, b, _ in pieces)
    assert pieces[0][1] == pieces[1][0]  # cut at the pause, nothing lost between them


def test_lines_not_read_as_written_are_left_out_and_split_the_piece():
    samples, _ = speech_with_gaps([2.0, 1.7, 1.0])
    lines = ("We have lost", "2/3 of our civilization", "to the Ilwrath.")
    pieces, left_out = build_uqm.pieces(build_uqm.Clip("supox", "x.ogg", lines, (2.1, 1.8)), samples)
    assert [p[2] for p in pieces] == ["we have lost", "to the ilwrath"]
    assert left_out == {"unread text": 1}
    # A long clip whose timings do not fit its lines is left out whole; a short one is kept whole.
    long_samples, _ = speech_with_gaps([9.0, 8.0])
    assert build_uqm.pieces(build_uqm.Clip("supox", "x.ogg", lines[:1], (9.1,)), long_samples)[0] == []
    short = build_uqm.pieces(build_uqm.Clip("supox", "x.ogg", ("We have lost", "everything"), ()), samples)
    assert short[0] == [(0, samples.size, "we have lost everything")]


def fake_packages(
    folder: Path, dialogue: str = "#(HELLO) rebels-000.ogg\nOur queen\nis dead.\n"
) -> tuple[Path, Path]:
    """Two .uqm zips laid out as the packages lay them out, with one short clip of noise and silence."""
    samples, _ = speech_with_gaps([1.2, 1.0])
    ogg = io.BytesIO()
    sf.write(ogg, samples, SR, format="OGG", subtype="VORBIS")
    voice, content = folder / "voice.uqm", folder / "content.uqm"
    with zipfile.ZipFile(voice, "w") as z:
        z.writestr(
            build_uqm.RESOURCE_MAP,
            "comm.yehat.rebel.dialogue = CONVERSATION:base/comm/yehatrebels/yehatrebels.txt:"
            "addons/3dovoice/yehatrebels/:addons/3dovoice/yehatrebels/yehatrebels.ts\n",
        )
        z.writestr("3dovoice/yehatrebels/yehatrebels.ts", "#(HELLO) 1300\n")
        z.writestr("3dovoice/yehatrebels/rebels-000.ogg", ogg.getvalue())
    with zipfile.ZipFile(content, "w") as z:
        z.writestr("base/comm/yehatrebels/yehatrebels.txt", dialogue)
    return voice, content


def test_clips_are_found_through_the_voice_packs_resource_map(tmp_path):
    voice, content = fake_packages(tmp_path)
    clips = build_uqm.clips_of(zipfile.ZipFile(voice), zipfile.ZipFile(content))
    ogg = "3dovoice/yehatrebels/rebels-000.ogg"
    assert clips == [build_uqm.Clip("yehatrebels", ogg, ("Our queen", "is dead."), (1.3,))]


def test_build_writes_a_manifest_of_playable_pieces(tmp_path, monkeypatch):
    voice, content = fake_packages(tmp_path)
    monkeypatch.setattr(build_uqm, "extract", lambda deb, member, into: deb)  # the .uqm in place of the .deb
    info = build_uqm.build(tmp_path / "out", {"uqm-voice": voice, "uqm-content": content})
    utterances = read_manifest(tmp_path / "out" / "train.jsonl")
    assert info["pieces"] == 1 and info["words"] == 4
    (u,) = utterances
    assert u.text == "our queen is dead" and u.speaker == "uqm-yehatrebels"
    samples, rate = sf.read(u.path)
    assert rate == SR and abs(samples.size / SR - u.duration) < 0.01
    assert u.duration == pytest.approx(2.4, abs=0.05)


def test_a_recording_is_used_once_and_listed_mismatches_are_left_out(tmp_path, monkeypatch):
    twice = "#(HELLO) rebels-000.ogg\nOur queen\nis dead.\n\n#(AGAIN) rebels-000.ogg\nOur queen is dead.\n"
    voice, content = fake_packages(tmp_path, twice)
    monkeypatch.setattr(build_uqm, "extract", lambda deb, member, into: deb)
    info = build_uqm.build(tmp_path / "a", {"uqm-voice": voice, "uqm-content": content})
    assert info["pieces"] == 1 and info["left_out"] == {"audio of an earlier key": 1}
    monkeypatch.setattr(build_uqm, "MISMATCHED", frozenset({"rebels-000-00"}))
    info = build_uqm.build(tmp_path / "b", {"uqm-voice": voice, "uqm-content": content})
    assert info["pieces"] == 0 and info["left_out"]["audio says more than the text"] == 1
    assert read_manifest(tmp_path / "b" / "train.jsonl") == []


@pytest.mark.skipif(not Path("corpus-uqm/train.jsonl").exists(), reason="no corpus-uqm (make data-uqm)")
def test_the_built_corpus_is_speech_with_transcripts():
    utterances = read_manifest("corpus-uqm/train.jsonl")
    assert len(utterances) > 3000 and len({u.speaker for u in utterances}) >= 15
    assert len({u.path for u in utterances}) == len(utterances)
    for u in utterances[::500]:
        assert u.text == normalize(u.text) and len(u.text.split()) >= 1
        assert build_uqm.MIN_SECONDS <= u.duration <= build_uqm.MAX_SECONDS
        assert sf.info(u.path).samplerate == SR


def test_copies_are_seeded_by_the_piece_and_drawn_from_the_copy_kinds():
    pieces = [build_uqm.Utterance(f"/uqm/spathi-{i:03d}-00.flac", 2.0, "hi", "uqm-spathi") for i in range(30)]
    jobs = build_uqm.copy_jobs(pieces, copies=2)
    assert len(jobs) == 60 and len({j.path for j in jobs}) == 60
    assert {j.kind for j in jobs} == set(build_uqm.COPY_KINDS)
    assert all(j.source == f"/uqm/{Path(j.path).stem[:-2]}.flac" for j in jobs)
    assert build_uqm.copy_jobs(pieces[5:], copies=2) == jobs[10:]  # the rest changes nothing
    assert build_uqm.copy_jobs(pieces, copies=2, seed=1) != jobs


def test_build_copies_writes_a_manifest_of_augmented_pieces(tmp_path, monkeypatch):
    voice, content = fake_packages(tmp_path)
    monkeypatch.setattr(build_uqm, "extract", lambda deb, member, into: deb)
    out = tmp_path / "out"
    build_uqm.build(out, {"uqm-voice": voice, "uqm-content": content})
    info = build_uqm.build_copies(out, copies=3, workers=1)
    (piece,) = read_manifest(out / "train.jsonl")
    copies = read_manifest(out / "train-augmented.jsonl")
    assert info["copies"] == 3 and len(copies) == 3
    clean, _ = sf.read(piece.path)
    for u in copies:
        assert u.text == piece.text and u.speaker == piece.speaker
        assert Path(u.path).parent.name in build_uqm.COPY_KINDS
        samples, rate = sf.read(u.path)
        assert rate == SR and abs(samples.size / SR - u.duration) < 0.01
        assert samples.size != clean.size or not np.allclose(samples, clean, atol=1e-3)
    assert build_uqm.build_copies(out, copies=3, workers=1) == info  # kept files are reused
    with pytest.raises(SystemExit, match="built with other voices, prompts or seed"):
        build_uqm.build_copies(out, copies=3, workers=1, seed=1)  # not under another seed
