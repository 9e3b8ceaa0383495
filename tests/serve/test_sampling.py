"""The batched sampler (engines/sampling.py) on hand-made logits: each processor does what its
definition says, draws follow the distribution, and a row's draws depend only on its own seed."""

from __future__ import annotations

import torch

from openchat_cli.serve.engines.base import SamplingParams
from openchat_cli.serve.engines.sampling import inverse_cdf, new_row_state, process_logits, sample

VOCAB = 16


def states(*params, prompt=(1, 2)):
    return [new_row_state(p, list(prompt), VOCAB, "cpu") for p in params]


def test_inverse_cdf_follows_the_distribution():
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.2, 0.7]]).repeat(4000, 1)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.tensor(inverse_cdf(probs, torch.rand(4000, generator=gen).tolist()))
    counts = torch.bincount(tokens, minlength=5).float() / 4000
    assert counts[0] == 0 and counts[2] == 0  # zero probability is never drawn
    assert torch.allclose(counts, probs[0], atol=0.03), counts
    # Unnormalised rows (after truncation) are scaled by their own total.
    half = inverse_cdf(torch.tensor([[0.0, 0.0, 0.5]]), [0.3])
    assert half == [2]


def test_each_row_draws_from_its_own_seed_whatever_the_company():
    seeded = SamplingParams(max_tokens=1, temperature=0.9, top_k=8, top_p=0.9, min_p=0.05, seed=42)
    company = [
        SamplingParams(max_tokens=1, temperature=0.0),
        SamplingParams(max_tokens=1, temperature=1.5, seed=1),
        SamplingParams(max_tokens=1, temperature=0.5, repetition_penalty=1.3),
        SamplingParams(max_tokens=1, temperature=1.0, logit_bias=((3, 5.0),)),
    ]
    # Run 20 steps alone and 20 steps in company: the seeded row's tokens are the same.
    solo_state = states(seeded)
    crowd_state = states(seeded, *company)
    solo, crowd = [], []
    for step in range(20):
        step_logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(step))
        solo.append(sample(step_logits[:1].clone(), solo_state, VOCAB)[0])
        crowd.append(sample(step_logits.clone(), crowd_state, VOCAB)[0])
    assert solo == crowd
    assert len(set(solo)) > 1  # it really samples


def test_top_k_top_p_min_p_keep_only_the_allowed_tokens():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.05, 0.05] + [1e-9] * (VOCAB - 5)]))
    rules = {
        SamplingParams(max_tokens=1, top_k=2, seed=0): {0, 1},
        SamplingParams(max_tokens=1, top_p=0.65, seed=0): {0, 1},  # 0.4 + 0.3 reaches 0.65
        SamplingParams(max_tokens=1, min_p=0.6, seed=0): {0, 1},  # >= 0.6 x 0.4
        SamplingParams(max_tokens=1, top_k=3, top_p=0.99, min_p=0.4, seed=0): {0, 1, 2},
    }
    for params, allowed in rules.items():
        row = states(params)
        seen = {sample(logits.clone(), row, VOCAB)[0] for _ in range(300)}
        assert seen == allowed, (params, seen)


def test_penalties_and_bias_follow_their_definitions():
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0] + [0.0] * (VOCAB - 4)])
    # repetition_penalty (vLLM): tokens in the prompt or reply, positive logits divided,
    # negative multiplied; others untouched.
    (row,) = states(SamplingParams(max_tokens=1, temperature=0.0, repetition_penalty=2.0), prompt=(0, 1))
    row.record(2)
    out = process_logits(logits.clone(), [row], VOCAB)
    assert out[0, :5].tolist() == [1.0, -4.0, 0.5, -1.0, 0.0]
    # presence/frequency: reply tokens only, frequency x count + presence once.
    (row,) = states(SamplingParams(max_tokens=1, presence_penalty=0.5, frequency_penalty=0.25), prompt=(0,))
    row.record(2)
    row.record(2)
    out = process_logits(logits.clone(), [row], VOCAB)
    assert out[0, :3].tolist() == [2.0, -2.0, 1.0 - 0.5 - 0.5]
    # logit_bias adds; a big bias makes greedy pick the token; the vocabulary limit masks the rest.
    (row,) = states(SamplingParams(max_tokens=1, temperature=0.0, logit_bias=((5, 100.0), (0, -1.0))))
    out = process_logits(logits.clone(), [row], 8)
    assert out[0, 0] == 1.0 and out[0, 5] == 100.0 and bool(torch.isinf(out[0, 8:]).all())
    (row,) = states(SamplingParams(max_tokens=1, temperature=0.0, logit_bias=((5, 100.0),)))
    assert sample(logits.clone(), [row], VOCAB) == [5]


def test_blocked_argmax_is_torchs_first_argmax():
    from openchat_cli.serve.engines.sampling import BLOCK, BLOCKED_FROM, first_argmax

    gen = torch.Generator().manual_seed(0)
    for width in (BLOCKED_FROM, BLOCKED_FROM + BLOCK + 5, 32000):
        x = torch.randn(6, width, generator=gen)
        x[1, 17] = x[1, width - 1] = 50.0  # a tie: the first id wins
        x[2] = float("-inf")  # nothing allowed: id 0, as argmax says
        x[3, width - 2] = 60.0  # the max in the tail block
        x[4, BLOCK * 2 + 3] = float("nan")  # NaN counts as the max
        x[5, :] = 1.0  # all equal: id 0
        assert first_argmax(x) == x.argmax(dim=-1).tolist()
        cut = x[:, : width - 3]  # a view whose rows are not contiguous with each other (the tokenizer cut)
        assert first_argmax(cut) == cut.argmax(dim=-1).tolist()


def test_blocked_inverse_cdf_follows_the_distribution_and_never_draws_a_zero():
    from openchat_cli.serve.engines.sampling import BLOCK, BLOCKED_FROM, _last_positive_at_most

    width = BLOCKED_FROM + BLOCK + 7
    probs = torch.zeros(3000, width)
    # Mass in the first and last id of a block, at a block edge, and in the short tail block.
    allowed = {0: 0.1, BLOCK - 1: 0.2, BLOCK: 0.1, 9 * BLOCK + 9: 0.25, width - 1: 0.3, width - 7: 0.05}
    for token, p in allowed.items():
        probs[:, token] = p * 2  # unnormalised, as after truncation
    gen = torch.Generator().manual_seed(0)
    tokens = torch.tensor(inverse_cdf(probs, torch.rand(len(probs), generator=gen).tolist()))
    assert set(tokens.tolist()) == set(allowed)
    counts = torch.bincount(tokens, minlength=width).float() / len(tokens)
    for token, p in allowed.items():
        assert abs(float(counts[token]) - p) < 0.03, (token, float(counts[token]), p)
    # Rounding that puts the target past the row's total falls back to the last allowed id, never
    # onto a zero (or past the end).
    row = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0, 0.0]])
    assert _last_positive_at_most(row, torch.tensor([6])).tolist() == [3]
    assert _last_positive_at_most(row, torch.tensor([2])).tolist() == [1]
    assert _last_positive_at_most(row, torch.tensor([3])).tolist() == [3]


def test_a_row_draws_the_same_blocked_or_in_company_and_past_the_tokenizer_never():
    """Wide vocabularies take the blocked paths: a seeded row is still independent of its
    company, and ids past `vocab_limit` (padded embedding rows) are never drawn, even when a
    bias or penalty names them."""
    width, limit = 5000, 4321  # past BLOCKED_FROM: the blocked paths
    seeded = SamplingParams(max_tokens=1, temperature=0.8, seed=7, logit_bias=((4500, 100.0), (3, 1.0)))
    company = [
        SamplingParams(max_tokens=1, temperature=0.0, repetition_penalty=1.2),
        SamplingParams(max_tokens=1, temperature=1.0, seed=3, presence_penalty=0.5),
    ]

    def make(*params):
        return [new_row_state(p, [1, 4400], width, "cpu") for p in params]

    solo_state, crowd_state = make(seeded), make(seeded, *company)
    solo, crowd = [], []
    for step in range(30):
        logits = torch.randn(3, width, generator=torch.Generator().manual_seed(step)) * 3
        logits[:, limit:] += 100.0  # the padded rows score highest: they must still never come out
        solo.append(sample(logits[:1].clone(), solo_state, limit)[0])
        got = sample(logits.clone(), crowd_state, limit)
        crowd.append(got[0])
        for state, token in zip(crowd_state, got):
            state.record(token)
        assert all(0 <= t < limit for t in got)
        if step == 0:  # greedy, before its repetition penalty has seen a reply token
            assert got[1] == int(logits[1, :limit].argmax())
    assert solo == crowd and len(set(solo)) > 1


def test_top_p_from_the_most_likely_candidates_equals_a_whole_sort():
    """Rows settled by the partial sort (peaked) and rows that need the whole sort (flat) keep
    exactly the ids a full descending sort keeps, each the same alone or batched."""
    from openchat_cli.serve.engines.sampling import TOP_P_CANDIDATES, top_p_cut

    gen = torch.Generator().manual_seed(0)
    width = 8 * TOP_P_CANDIDATES
    peaked = torch.softmax(torch.randn(3, width, generator=gen) * 4, dim=-1)
    flat = torch.softmax(torch.randn(3, width, generator=gen) * 0.1, dim=-1)
    probs = torch.cat([peaked, flat])
    ps = torch.tensor([[0.5], [0.9], [0.99], [0.5], [0.9], [0.2]])

    def by_sort(row, p):
        values, order = row.sort(descending=True)
        kept = order[(values.cumsum(0) - values) <= p]
        return set(kept.tolist())

    got = top_p_cut(probs.clone(), ps)
    for i in range(len(probs)):
        kept = set(got[i].nonzero().squeeze(1).tolist())
        assert kept == by_sort(probs[i], float(ps[i])) and len(kept) > 1
        assert torch.equal(got[i, list(kept)], probs[i, list(kept)])  # kept ids keep their probability
        assert torch.equal(top_p_cut(probs[i : i + 1].clone(), ps[i : i + 1])[0], got[i])
    assert len(set(got[4].nonzero().squeeze(1).tolist())) > TOP_P_CANDIDATES  # a flat row went past them
