"""Tests for asr.decoding on synthetic CTC log-probabilities spelled from text, ambiguous where it matters."""

import argparse
import math
import os
import random
from pathlib import Path

import jiwer
import pytest
import torch
from flashlight.lib.text.decoder.kenlm import KenLM
from flashlight.lib.text.dictionary import Dictionary
from torchaudio.models.decoder import ctc_decoder

from asr import decoder_config, decoding
from asr.decoding import (
    BeamDecoder,
    DecoderConfig,
    GreedyDecoder,
    HotwordBooster,
    Hypothesis,
    beam_search,
    build_arpa,
    greedy,
    load_resources,
    make_decoder,
    write_lexicon,
)
from asr.text import BLANK, TOKEN_TO_ID, TOKENS

V = len(TOKENS)
BEAM = DecoderConfig(method="beam")


def emissions(
    text: str,
    rep: int = 2,
    gap: int = 1,
    p: float = 0.9,
    confusions: dict[int, dict[str, float]] | None = None,
    noise: float = 0.0,
    seed: int = 0,
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(T, V) log-probs spelling `text` and the frame span [start, end) of each character.

    Each character takes `rep` frames with probability `p` (or the distribution confusions[i] for character
    i), followed by `gap` blank frames; the rest of each frame's mass is spread evenly, then Gaussian noise
    of std `noise` is added to the log-probs before renormalising.
    """
    rows, spans = [], []
    for i, c in enumerate(text):
        dist = (confusions or {}).get(i, {c: p})
        spans.append((len(rows), len(rows) + rep))
        rows += [dist] * rep + [{BLANK: p}] * gap
    probs = torch.empty(len(rows), V)
    for t, dist in enumerate(rows):
        probs[t] = (1 - sum(dist.values())) / (V - len(dist))
        for ch, q in dist.items():
            probs[t, TOKEN_TO_ID[ch]] = q
    log_probs = probs.log()
    if noise:
        log_probs += noise * torch.randn(log_probs.shape, generator=torch.Generator().manual_seed(seed))
    return log_probs.log_softmax(dim=1), spans


def path_log_probs(path: list[int]) -> torch.Tensor:
    """(T, V) log-probs whose argmax at frame t is path[t], with a peak posterior of 0.9."""
    probs = torch.full((len(path), V), 0.1 / (V - 1))
    probs[torch.arange(len(path)), torch.tensor(path)] = 0.9
    return probs.log()


def random_chunks(log_probs: torch.Tensor, rng: random.Random) -> list[torch.Tensor]:
    """log_probs cut at random places, empty chunks included."""
    cuts = sorted(rng.randint(0, len(log_probs)) for _ in range(rng.randint(0, 8)))
    return [log_probs[a:b] for a, b in zip([0, *cuts], [*cuts, len(log_probs)], strict=True)]


def decode_chunks(decoder, chunks) -> Hypothesis:
    decoder.begin()
    for chunk in chunks:
        decoder.step(chunk)
    return decoder.end()[0]


# --------------------------------------------------------------------------------------------- greedy


def test_greedy_collapses_repeats_and_drops_blanks():
    path = [TOKEN_TO_ID.get(c, 0) for c in "_hhell_loo  _wo_"]  # "_": blank
    hyp = greedy(path_log_probs(path))
    assert hyp.text == "hello wo"
    assert hyp.tokens == tuple(TOKEN_TO_ID[c] for c in "hello wo")
    assert hyp.starts == (1, 3, 4, 7, 8, 10, 13, 14)
    assert hyp.ends == (3, 4, 6, 8, 10, 12, 14, 15)
    assert hyp.score == pytest.approx(len(path) * math.log(0.9), rel=1e-6)
    words = hyp.words()
    assert [(w.word, w.start_frame, w.end_frame) for w in words] == [("hello", 1, 10), ("wo", 13, 15)]
    assert all(w.confidence == pytest.approx(0.9) for w in words) and hyp.confidence == pytest.approx(0.9)
    assert words[1].seconds(0.04) == pytest.approx((0.52, 0.6))
    assert greedy(path_log_probs([0, 1, 1, 0])).text == "" and greedy(torch.zeros(0, V)) == Hypothesis()


def test_greedy_word_confidence_is_its_least_sure_letter():
    log_probs, _ = emissions("bat cat", confusions={0: {"b": 0.6, "p": 0.3}})
    words = greedy(log_probs).words()
    assert [w.word for w in words] == ["bat", "cat"]
    assert words[0].confidence == pytest.approx(0.6, abs=1e-6)
    assert words[1].confidence == pytest.approx(0.9, abs=1e-6)


def test_incremental_greedy_equals_greedy_on_the_whole_for_any_chunking():
    rng = random.Random(0)
    decoder = GreedyDecoder()
    for trial in range(30):
        # random frames, each repeated 1-3 times: runs of tokens and blanks, often across chunk boundaries
        frames = 4 * torch.randn(rng.randint(1, 30), V, generator=torch.Generator().manual_seed(trial))
        frames[:, 0] += 2  # blank often wins
        repeats = torch.tensor([rng.randint(1, 3) for _ in range(len(frames))])
        log_probs = frames.log_softmax(dim=1).repeat_interleave(repeats, dim=0)
        chunks = random_chunks(log_probs, rng)
        assert decode_chunks(decoder, chunks) == greedy(log_probs)
        assert decoder.result() == [greedy(log_probs)]


def test_incremental_greedy_keeps_a_token_spanning_a_chunk_boundary_and_restarts_at_begin():
    a, b = TOKEN_TO_ID["a"], 0
    log_probs = path_log_probs([a, a, a, b, a])
    decoder = GreedyDecoder()
    hyp = decode_chunks(decoder, [log_probs[:2], log_probs[2:4], log_probs[4:]])
    assert (hyp.text, hyp.starts, hyp.ends) == ("aa", (0, 4), (3, 5))
    assert decoder.frames == 5
    # the same object decodes the next utterance, frames counted from its start
    hyp = decode_chunks(decoder, [log_probs[1:], log_probs[:0]])
    assert (hyp.text, hyp.starts, hyp.ends, decoder.frames) == ("aa", (0, 3), (2, 4), 4)
    with pytest.raises(RuntimeError):
        decoder.step(log_probs)


# --------------------------------------------------------------------------------------------- beam


def test_beam_without_lm_spells_clean_text_with_word_timings_inside_the_spelled_frames():
    text = "hello brave new world"
    log_probs, spans = emissions(text, noise=0.3)
    hyp = beam_search(log_probs)[0][0]
    assert hyp.text == text
    starts = [i for i, c in enumerate(text) if c != " " and (i == 0 or text[i - 1] == " ")]
    for word, first in zip(hyp.words(), starts, strict=True):
        last = first + len(word.word) - 1
        assert spans[first][0] <= word.start_frame < word.end_frame <= spans[last][1]
        assert word.confidence > 0.5


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> Path:
    """A trigram ARPA over a few sentences about bats, pats and cats."""
    corpus = ["the bat sat on the mat", "the cat sat on the hat", "pat the cat", "a bat and a cat"]
    return build_arpa(corpus, tmp_path_factory.mktemp("lm") / "tiny.arpa", order=3)


@pytest.fixture(scope="module")
def tiny_lexicon(tmp_path_factory) -> Path:
    words = ["the", "bat", "pat", "cat", "sat", "on", "mat", "hat", "patio", "a", "and"]
    return write_lexicon(words, tmp_path_factory.mktemp("lex") / "lexicon.txt")


def beam_configs(tiny_lm, tiny_lexicon) -> dict[str, DecoderConfig]:
    return {
        "lexicon-free": BEAM,
        "lexicon": DecoderConfig(method="beam", lexicon_path=str(tiny_lexicon)),
        "lm": DecoderConfig(method="beam", lm_path=str(tiny_lm), lm_weight=1.0),
    }


@pytest.mark.parametrize("mode", ["lexicon-free", "lexicon", "lm"])
def test_incremental_beam_equals_batch_beam(mode, tiny_lm, tiny_lexicon):
    config = beam_configs(tiny_lm, tiny_lexicon)[mode]
    resources = load_resources(config)
    rng = random.Random(1)
    decoder = make_decoder(config, resources=resources)
    assert isinstance(decoder, BeamDecoder)
    texts = ["the bat sat on the mat", "a cat and a bat", "pat the hat"]
    utterances = [emissions(t, noise=1.0, seed=i)[0] for i, t in enumerate(texts)]
    batch = torch.nn.utils.rnn.pad_sequence(utterances, batch_first=True)
    lengths = torch.tensor([len(u) for u in utterances])
    batched = beam_search(batch, config, lengths=lengths, resources=resources)
    for text, log_probs, expected in zip(texts, utterances, batched, strict=True):
        hyp = decode_chunks(decoder, random_chunks(log_probs, rng))
        assert hyp == expected[0]
        assert hyp.text == text
        assert hyp.words()[-1].word == text.split()[-1]  # lexicon decoding keeps the unseparated last word


def test_beam_partial_grows_with_the_stream_and_matches_the_end(tiny_lm):
    config = DecoderConfig(method="beam", lm_path=str(tiny_lm))
    decoder = make_decoder(config)
    log_probs, spans = emissions("the cat sat")
    decoder.begin()
    partials = []
    for start in range(0, len(log_probs), 4):
        decoder.step(log_probs[start : start + 4])
        partials.append(decoder.partial().text)
    assert partials[0] == "th"  # lexicon decoding shows the word under way (flashlight's best would not)
    assert all("the cat sat".startswith(p) for p in partials)
    assert decoder.end()[0].text == "the cat sat" == decoder.partial().text


def test_nbest_gives_distinct_alternatives_best_first():
    confusions = {0: {"b": 0.45, "p": 0.3, "c": 0.2}}
    log_probs, _ = emissions("bat", confusions=confusions, rep=1)
    hyps = beam_search(log_probs, DecoderConfig(method="beam", nbest=3))[0]
    assert [h.text for h in hyps] == ["bat", "pat", "cat"]
    assert hyps[0].score >= hyps[1].score >= hyps[2].score
    assert hyps[1].words()[0].confidence == pytest.approx(0.3, abs=1e-6)
    assert len(beam_search(log_probs, BEAM)[0]) == 1


# --------------------------------------------------------------------------------------------- hotwords


@pytest.mark.parametrize(
    "phrase,total",
    [
        ("new york", 7.0),
        ("in new york city", 7.0),
        ("new yorker", 0.0),  # the phrase must end at a word end
        ("renew york", 0.0),  # and start at a word start
        ("new yor", 0.0),  # an unfinished phrase is refunded at the end
        ("the new new york", 7.0),  # a broken match resumes at the next word start
        ("new york new york", 14.0),
    ],
)
def test_hotword_booster_rewards_whole_phrases_only(phrase, total):
    booster = HotwordBooster.for_characters([("New York", 1.0)])
    node, score = HotwordBooster.ROOT, 0.0
    for c in phrase:
        node, bonus = booster.advance(node, TOKEN_TO_ID[c])
        score += bonus
    assert score + booster.finish(node) == pytest.approx(total)


@pytest.mark.parametrize("mode", ["lexicon-free", "lexicon", "lm"])
def test_hotwords_decide_between_acoustically_ambiguous_words(mode, tiny_lm, tiny_lexicon):
    config = beam_configs(tiny_lm, tiny_lexicon)[mode]
    resources = load_resources(config)
    # "bat" or "pat": the first letter is a near tie that "b" wins on its own
    log_probs, _ = emissions("the bat sat", confusions={4: {"b": 0.47, "p": 0.43}})

    def decode(hotwords):
        return decode_chunks(make_decoder(config, hotwords, resources), [log_probs]).text

    assert decode(None) == "the bat sat"
    assert decode([("pat", 1.0)]) == "the pat sat"
    assert decode([("the pat sat", 0.5)]) == "the pat sat"
    assert decode([("patio", 1.0)]) == "the bat sat"  # "pat" would win with this, were it not refunded
    assert decode([("cat", 1.0), ("hat", 1.0)]) == "the bat sat"  # not against clear acoustics
    assert decode([("zebra crossing", 2.0)]) == "the bat sat"  # words outside a lexicon are skipped
    assert decode(None) == "the bat sat"  # nothing of the last request stays in the shared resources


def test_hotwords_make_a_greedy_config_search_the_beam():
    assert isinstance(make_decoder(DecoderConfig()), GreedyDecoder)
    decoder = make_decoder(DecoderConfig(), hotwords=[("pat", 1.0)])
    log_probs, _ = emissions("bat", confusions={0: {"b": 0.47, "p": 0.43}})
    assert isinstance(decoder, BeamDecoder) and decode_chunks(decoder, [log_probs]).text == "pat"


# --------------------------------------------------------------------------------------------- ARPA


def read_arpa(path: Path) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], float]]:
    """ARPA file -> (log10 prob of each n-gram, log10 backoff of each n-gram that has one)."""
    probs, backoffs = {}, {}
    section = 0
    for line in path.read_text().splitlines():
        if line.startswith("\\") and line.endswith("-grams:"):
            section = int(line[1:].split("-")[0])
        elif section and line.strip() and not line.startswith("\\"):
            fields = line.split("\t")
            gram = tuple(fields[1].split())
            assert len(gram) == section
            probs[gram] = float(fields[0])
            if len(fields) > 2:
                backoffs[gram] = float(fields[2])
    return probs, backoffs


def arpa_log10(probs, backoffs, context: tuple[str, ...], word: str) -> float:
    """log10 P(word | context) by ARPA backoff."""
    if context + (word,) in probs:
        return probs[context + (word,)]
    return backoffs.get(context, 0.0) + arpa_log10(probs, backoffs, context[1:], word)


def test_build_arpa_writes_a_normalised_kneser_ney_model_that_kenlm_reads_the_same(tmp_path):
    corpus = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the cat ran", "Ran!"]
    path = build_arpa(corpus, tmp_path / "lm.arpa", order=3)
    probs, backoffs = read_arpa(path)
    header = {int(n): int(c) for n, c in (line[6:].split("=") for line in path.read_text().splitlines()[1:4])}
    assert header == {n: sum(len(g) == n for g in probs) for n in (1, 2, 3)}
    vocab = [g[0] for g in probs if len(g) == 1 and g[0] != "<s>"]
    assert {"<unk>", "</s>", "cat", "ran"} <= set(vocab)
    for context in [(), *(g for g in backoffs if len(g) < 3)]:
        total = sum(10 ** arpa_log10(probs, backoffs, context, w) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-4), context
    assert arpa_log10(probs, backoffs, ("the",), "cat") > arpa_log10(probs, backoffs, ("the",), "and")

    words = Dictionary(["<unk>", "the", "cat", "sat", "zebra", "</s>"])
    kenlm = KenLM(str(path), words)
    state = kenlm.start(False)
    history = ("<s>",)
    for word in ["the", "cat", "sat", "zebra", "the"]:  # a seen trigram, a backoff and an unknown word
        word = word if (word,) in probs else "<unk>"
        state, score = kenlm.score(state, words.get_index(word))
        assert score == pytest.approx(arpa_log10(probs, backoffs, history[-2:], word), abs=1e-5)
        history += (word,)
    end = arpa_log10(probs, backoffs, history[-2:], "</s>")
    assert kenlm.finish(state)[1] == pytest.approx(end, abs=1e-5)


def test_build_arpa_loads_in_torchaudios_own_ctc_decoder(tmp_path, tiny_lm):
    lexicon = write_lexicon(decoding.arpa_words(tiny_lm), tmp_path / "lexicon.txt")
    assert "bat\tb a t |" in lexicon.read_text().splitlines()
    decoder = ctc_decoder(
        str(lexicon), list(decoding.FLASHLIGHT_TOKENS), lm=str(tiny_lm), blank_token=BLANK, sil_token="|"
    )
    log_probs, _ = emissions("the cat sat on the mat ")  # torchaudio needs the final separator itself
    assert decoder(log_probs[None].contiguous())[0][0].words == "the cat sat on the mat".split()


def confusable(word: str, vocab: set[str]) -> tuple[int, str] | None:
    """(position, letter) that turns `word` into another vocabulary word, if one does."""
    for i in range(len(word)):
        for letter in "abcdefghijklmnopqrstuvwxyz":
            if letter != word[i] and word[:i] + letter + word[i + 1 :] in vocab:
                return i, letter
    return None


def test_lm_built_from_the_domain_lowers_wer_where_lexicon_alone_cannot(data_dir, tmp_path):
    sentences = (data_dir / "text" / "ljspeech-sentences.txt").read_text().splitlines()[:1500]
    lm = build_arpa(sentences, tmp_path / "lj.arpa", order=3)
    vocab = set(decoding.arpa_words(lm))
    rng = random.Random(0)
    refs, utterances = [], []
    for sentence in rng.sample(sentences, 12):
        # the acoustics favour a wrong letter in about half the words: a non-word (a lexicon fixes it) or
        # another word of the vocabulary (only the LM can tell)
        confusions, offset = {}, 0
        for word in sentence.split():
            swap = confusable(word, vocab) if rng.random() < 0.5 else None
            if swap is None and rng.random() < 0.3:
                swap = (rng.randrange(len(word)), rng.choice("qxzj"))
            if swap is not None:
                i, letter = swap
                confusions[offset + i] = {letter: 0.5, word[i]: 0.4}
            offset += len(word) + 1
        refs.append(sentence)
        utterances.append(emissions(sentence, confusions=confusions, noise=0.3, seed=len(refs))[0])

    def wer(config: DecoderConfig) -> float:
        resources = load_resources(config)
        return jiwer.wer(refs, [beam_search(u, config, resources=resources)[0][0].text for u in utterances])

    wer_greedy = jiwer.wer(refs, [greedy(u).text for u in utterances])
    wer_beam = wer(BEAM)
    wer_lexicon = wer(DecoderConfig(method="beam", lexicon_path=str(write_lexicon(vocab, tmp_path / "lex"))))
    wer_lm = wer(DecoderConfig(method="beam", lm_path=str(lm), lm_weight=1.0))
    print(f"WER greedy {wer_greedy:.3f} beam {wer_beam:.3f} lexicon {wer_lexicon:.3f} +LM {wer_lm:.3f}")
    assert wer_greedy > 0.4 and wer_beam > 0.4
    assert wer_lm < 0.5 * wer_lexicon < wer_beam
    assert wer_lm < 0.05


# --------------------------------------------------------------------------------------------- config, CLI


def test_config_checks_and_resources_must_match():
    with pytest.raises(ValueError):
        DecoderConfig(lm_path="lm.arpa")  # greedy cannot use an LM
    with pytest.raises(ValueError):
        DecoderConfig(method="viterbi")
    with pytest.raises(ValueError):
        make_decoder(DecoderConfig(method="beam", lexicon_path="x.txt"), resources=load_resources(BEAM))
    with pytest.raises(ValueError):
        greedy(torch.zeros(3, V - 1))


def test_build_lm_command_line(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("The cat sat.\nThe dog ran 2 miles!\n")
    rc = decoding.main(
        ["build-lm", "--text", str(text), "--order", "2", "--out", str(tmp_path / "lm.arpa"), "--lexicon",
         str(tmp_path / "lexicon.txt")]
    )  # fmt: skip
    assert rc == 0
    assert "\\2-grams:" in (tmp_path / "lm.arpa").read_text()
    lexicon = (tmp_path / "lexicon.txt").read_text().splitlines()
    assert "two\tt w o |" in lexicon and len(lexicon) == 7
    rc = decoding.main(["lexicon", "--text", str(text), "--out", str(tmp_path / "words.txt")])
    assert rc == 0 and (tmp_path / "words.txt").read_text().splitlines() == lexicon


def test_decoding_flags_default_to_the_bundled_lm(tmp_path):
    parser = argparse.ArgumentParser()
    decoder_config.add_decoder_args(parser)

    def config(*argv):
        return decoder_config.decoder_from_args(parser.parse_args(argv))

    assert config() == DecoderConfig.bundled()
    assert decoder_config.BUNDLED_LM.is_file() and decoder_config.BUNDLED_LEXICON.is_file()
    assert config("--decoder", "greedy") == DecoderConfig()
    other = tmp_path / "other.arpa"
    other.write_text("\\data\\\n")
    assert config("--lm", str(other)) == DecoderConfig(method="beam", lm_path=str(other))  # its own words
    assert config("--lm", "none") == DecoderConfig(method="beam")  # lexicon-free, no LM
    assert config("--lexicon", "none") == DecoderConfig(method="beam", lm_path=str(decoder_config.BUNDLED_LM))
    assert config("--lm-weight", "0.8").lm_weight == 0.8
    with pytest.raises(ValueError, match="for --decoder beam"):
        config("--decoder", "greedy", "--lm", str(other))
    with pytest.raises(ValueError, match="missing.arpa: no such file"):
        config("--lm", str(tmp_path / "missing.arpa"))
    descriptions = {
        "greedy": config("--decoder", "greedy"),
        f"beam 32, LM {decoder_config.BUNDLED_LM} (weight 0.5)": config(),
        f"beam 8, LM {other} (weight 0.8)": config("--lm", str(other), "--lm-weight", ".8", "--beam-size=8"),
        f"beam 32, lexicon {decoder_config.BUNDLED_LEXICON}, no LM": config(
            "--lm", "none", "--lexicon", str(decoder_config.BUNDLED_LEXICON)
        ),
        "beam 32, no LM, no lexicon": config("--lm", "none"),
    }
    assert {c.describe(): c for c in descriptions.values()} == descriptions


def test_loading_an_arpa_keeps_kenlms_progress_report_off_stderr(capfd, tiny_lm, tiny_lexicon):
    load_resources(DecoderConfig(method="beam", lm_path=str(tiny_lm)))
    assert capfd.readouterr().err == ""
    with decoding._without_kenlm_chatter():  # anything else written to fd 2 meanwhile still comes out
        os.write(2, b"Reading /some.arpa\nsomething else\n")
    assert capfd.readouterr().err == "something else\n"
    with pytest.raises(RuntimeError, match="not .data"):  # and a bad file's error is KenLM's own
        load_resources(DecoderConfig(method="beam", lm_path=__file__, lexicon_path=str(tiny_lexicon)))
