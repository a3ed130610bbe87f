import random

import pytest
import torch

from asr.model import (
    AcousticModel,
    ModelConfig,
    next_step,
    reverse_padded,
    stack_states,
    unstack_state,
    widen,
)


def stream(model, feats, chunk, right, rng=None):
    """Step a (T, n_mels) utterance through model.step; with rng, the frames arrive in random pieces."""
    S, T = model.config.subsample, feats.shape[0]
    state, parts, pos, have = model.init_state(1), [], 0, 0
    while pos < T:
        have = min(T, have + rng.randint(1, 40)) if rng else T
        while (cut := next_step(have - pos, chunk, right, S, final=have == T)) is not None:
            frames, r = cut
            log_probs, state = model.step(feats[None, pos : pos + frames], state, r)
            parts.append(log_probs[0])
            pos += frames - r * S
    return torch.cat(parts)


def make(rnn, bidirectional, subsample=3):
    torch.manual_seed(0)
    cfg = ModelConfig(
        conv_channels=32,
        conv_kernel=5,
        subsample=subsample,
        rnn_type=rnn,
        rnn_layers=2,
        hidden=24,
        bidirectional=bidirectional,
        dropout=0.0,
    )
    return AcousticModel(cfg).eval()


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_step_equals_chunked_forward(rnn, bidirectional, seed):
    rng = random.Random(seed)
    model = make(rnn, bidirectional, subsample=rng.choice([2, 3, 4]))
    chunk, right = rng.randint(1, 12), rng.randint(0, 6)
    lengths = torch.tensor([rng.randint(150, 400), rng.randint(20, 149), 7])
    x = torch.randn(3, int(lengths.max()), 80)
    with torch.no_grad():
        ref, out_len = model(x, lengths, chunk, right)
        for b in range(3):
            got = stream(model, x[b, : lengths[b]], chunk, right, rng)
            assert got.shape[0] == out_len[b]
            assert (got - ref[b, : out_len[b]]).abs().max().item() < 1e-4


def test_chunked_differs_from_full_context_only_when_bidirectional():
    x, lengths = torch.randn(2, 200, 80), torch.tensor([200, 120])
    with torch.no_grad():
        for bi in (True, False):
            model = make("lstm", bi)
            full, _ = model(x, lengths)
            chunked, _ = model(x, lengths, 5, 2)
            diff = (full - chunked)[1, :40].abs().max().item()
            assert (diff > 1e-3) if bi else (diff < 1e-5)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_one_window_over_the_whole_utterance_is_full_context(rnn):
    """A chunk as long as the utterance sees all of it, as full context does (right context beyond the end
    is padding, so nothing changes)."""
    model = make(rnn, True)
    x, lengths = torch.randn(2, 150, 80), torch.tensor([150, 150])
    with torch.no_grad():
        full, n = model(x, lengths)
        for right in (0, 4):
            chunked, _ = model(x, lengths, int(n[0]), right)
            assert (full - chunked).abs().max() < 1e-5
            streamed = stream(model, x[0], int(n[0]), right)
            assert (full[0] - streamed).abs().max() < 1e-5


def test_padding_does_not_change_outputs():
    model = make("gru", True)
    x = torch.randn(1, 150, 80)
    padded = torch.cat([x, torch.randn(1, 60, 80)], dim=1)
    with torch.no_grad():
        for chunk in (None, 6):
            a, _ = model(x, torch.tensor([150]), chunk, 3)
            b, n = model(padded, torch.tensor([150]), chunk, 3)
            assert (a[0] - b[0, : n[0]]).abs().max() < 1e-5


def test_batched_states_stack_and_unstack():
    model = make("lstm", True)
    feats = torch.randn(3, 48, 80)
    with torch.no_grad():
        alone = [model.step(feats[i : i + 1], model.init_state(1), 2) for i in range(3)]
        together, state = model.step(feats, stack_states([model.init_state(1)] * 3), 2)
        for i, part in enumerate(unstack_state(state)):
            assert (together[i] - alone[i][0][0]).abs().max() < 1e-5
            for a, b in zip(part, alone[i][1], strict=True):
                assert (a - b).abs().max() < 1e-5


def test_reverse_padded():
    x = torch.arange(10.0).reshape(2, 5, 1)
    out = reverse_padded(x, torch.tensor([5, 3]))
    assert out[:, :, 0].tolist() == [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]]


def test_next_step_cuts_like_forward_chunked():
    assert next_step(30, 8, 2, 3, final=False) == (30, 2)
    assert next_step(29, 8, 2, 3, final=False) is None
    assert next_step(29, 8, 2, 3, final=True) == (27, 1)
    assert next_step(20, 8, 2, 3, final=True) == (20, 0)
    assert next_step(0, 8, 2, 3, final=True) is None


def test_bad_config():
    with pytest.raises(ValueError, match="rnn_type"):
        ModelConfig(rnn_type="transformer")


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_int8_copy_streams_closely_and_stays_close_to_float(rnn):
    from asr.model import quantize_int8

    model = make(rnn, True)
    q = quantize_int8(model)
    assert any("quantized" in type(m).__module__ for m in q.modules())
    x, lengths = torch.randn(1, 240, 80), torch.tensor([240])
    with torch.no_grad():
        ref, n = q(x, lengths, 6, 3)
        # activations are quantised per call, with ranges from what that call sees: close, not exact
        assert (stream(q, x[0], 6, 3, random.Random(0)) - ref[0, : n[0]]).abs().max() < 1e-2
        full, _ = model(x, lengths, 6, 3)
        # int8 weights: the output distribution moves a little, not a lot
        assert (ref.exp() - full.exp()).abs().max() < 0.1


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_widened_model_computes_the_same_function_and_can_learn_with_its_new_units(rnn, bidirectional):
    model = make(rnn, bidirectional)
    wide = widen(model, 40, torch.Generator().manual_seed(1))
    assert wide.config.hidden == 40 and wide.num_parameters() > model.num_parameters()
    x, lengths = torch.randn(2, 240, 80), torch.tensor([240, 150])
    with torch.no_grad():
        for chunk in (None, 5):
            a, _ = model(x, lengths, chunk, 3)
            b, _ = wide(x, lengths, chunk, 3)
            assert (a - b).abs().max().item() < 1e-4, chunk
        assert (stream(model, x[0], 5, 3) - stream(wide, x[0], 5, 3)).abs().max().item() < 1e-4
    # the new units are live: their outgoing weights get a gradient, so training can bring them in
    wide(x, lengths)[0].logsumexp(-1).sum().backward()  # any loss that depends on the output
    new_cols = wide.head.weight.grad[:, 24:40]
    assert new_cols.abs().sum() > 0 and wide.head.weight[:, 24:40].abs().sum() == 0
    with pytest.raises(ValueError, match="only widen"):
        widen(model, 16)
