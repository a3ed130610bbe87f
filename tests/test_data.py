import pytest

from asr.data import ManifestError, Utterance, read_manifest, write_manifest


def test_reads_shared_transcripts(data_dir):
    fsdd = read_manifest(data_dir / "fsdd")
    assert len(fsdd) == 3000
    first = fsdd[0]
    assert first.path.endswith("audio/0_george_0.flac") and first.text == "zero" and first.speaker == "george"
    assert 0.1 < first.duration < 2.0
    an4 = read_manifest(data_dir / "an4" / "transcripts.tsv")
    assert len(an4) == 51 and all(u.text for u in an4)


def test_jsonl_roundtrip(tmp_path, data_dir):
    utts = read_manifest(data_dir / "pocketsphinx")
    path = tmp_path / "m.jsonl"
    write_manifest(path, utts)
    assert read_manifest(path) == utts
    (tmp_path / "rel.jsonl").write_text('{"path": "x.flac", "duration": 1.5, "text": "hi"}\n')
    assert read_manifest(tmp_path / "rel.jsonl") == [Utterance(str(tmp_path / "x.flac"), 1.5, "hi")]


def test_bad_manifests(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.flac", "duration": 1}\nnot json\n')
    with pytest.raises(ManifestError, match="bad.jsonl:2"):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "t.tsv").write_text("file\ttext\na\tb\n")
    with pytest.raises(ManifestError, match="'path' column"):
        read_manifest(tmp_path / "t.tsv")
