from __future__ import annotations

import torch

from grpokit.algorithms import clip_cov_mask, kl_cov_penalty, token_covariance
from grpokit.algorithms.covariance import clip_cov_key_threshold, covariance_means, kl_cov_threshold

# Hand-computed case over 4 valid tokens (last column is padding):
# logp = [-1, -3 | -2, -2], mean -2 → centred [1, -1, 0, 0]; A = [2 | -2] per row, mean 0 → cov [2, -2, 0, 0]
LOGP = torch.tensor([[-1.0, -3.0, 50.0], [-2.0, -2.0, 50.0]])
ADV = torch.tensor([2.0, -2.0])
MASK = torch.tensor([[1, 1, 0], [1, 1, 0]])


def test_token_covariance_hand_case_ignores_padding():
    torch.testing.assert_close(
        token_covariance(LOGP, ADV, MASK), torch.tensor([[2.0, -2.0, 0.0], [0.0, 0.0, 0.0]])
    )


def test_clip_cov_picks_only_tokens_inside_the_band():
    selected = clip_cov_mask(LOGP, ADV, MASK, clip_ratio=0.5, cov_low=1.0, cov_high=5.0)
    assert selected.tolist() == [[True, False, False], [False, False, False]]
    # out of band or excluded → nothing
    assert not clip_cov_mask(LOGP, ADV, MASK, clip_ratio=0.5, cov_low=2.5, cov_high=5.0).any()
    exclude = torch.tensor([[True, False, False], [False, False, False]])
    assert not clip_cov_mask(LOGP, ADV, MASK, clip_ratio=0.5, exclude=exclude).any()


def test_clip_cov_selects_clip_ratio_of_valid_tokens_at_random():
    gen = torch.Generator().manual_seed(0)
    logp = torch.linspace(-3, 0, 1000).reshape(10, 100)
    adv = torch.linspace(-1, 1, 10) * 20
    mask = torch.ones(10, 100)
    band = (token_covariance(logp, adv, mask) > 1) & (token_covariance(logp, adv, mask) < 5)
    first = clip_cov_mask(logp, adv, mask, clip_ratio=0.01, generator=gen)
    second = clip_cov_mask(logp, adv, mask, clip_ratio=0.01, generator=gen)
    assert first.sum() == second.sum() == 10  # ⌊0.01 · 1000⌋
    assert band[first].all() and band[second].all()
    assert not torch.equal(first, second)


def test_kl_cov_penalizes_top_covariance_tokens_with_gradient():
    logp = LOGP.clone().requires_grad_()
    old = LOGP - torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    penalty, selected = kl_cov_penalty(logp, old, ADV, MASK, top_fraction=0.25, coef=2.0)
    assert selected.tolist() == [[True, False, False], [False, False, False]]
    torch.testing.assert_close(penalty, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    penalty.sum().backward()
    assert logp.grad[0, 0] == 2.0 and logp.grad.abs().sum() == 2.0


def test_kl_cov_selects_at_least_one_token_and_none_without_valid_tokens():
    _, selected = kl_cov_penalty(LOGP, LOGP, ADV, MASK, top_fraction=1e-9)
    assert selected.sum() == 1
    _, selected = kl_cov_penalty(LOGP, LOGP, ADV, torch.zeros_like(MASK))
    assert not selected.any()


def test_covariance_with_the_whole_batchs_means_hand_case():
    # Row 1 alone has mean log π −2 and mean A −2; with the whole batch's means (−2, 0) its cov is 0, 0.
    means = covariance_means(LOGP, ADV, MASK)
    torch.testing.assert_close(torch.stack(means), torch.tensor([-2.0, 0.0]))
    row = token_covariance(LOGP[1:], ADV[1:], MASK[1:], means=means)
    torch.testing.assert_close(row, torch.zeros(1, 3))


def test_kl_cov_threshold_is_the_kth_largest_cov_and_selects_across_a_split():
    cov = token_covariance(LOGP, ADV, MASK)  # [2, −2 | 0, 0]
    assert kl_cov_threshold(cov, MASK, 0.25) == 2.0  # k = max(1, ⌊0.25·4⌋) = 1
    assert kl_cov_threshold(cov, MASK, 0.75) == 0.0  # k = 3: 2, 0, 0
    # Row 1 alone would select its own top token; with the batch's means and threshold it selects none.
    means = covariance_means(LOGP, ADV, MASK)
    _, alone = kl_cov_penalty(LOGP[1:], LOGP[1:], ADV[1:], MASK[1:], top_fraction=0.25)
    _, in_batch = kl_cov_penalty(LOGP[1:], LOGP[1:], ADV[1:], MASK[1:], means=means, threshold=2.0)
    assert alone.sum() >= 1 and not in_batch.any()


def test_clip_cov_key_threshold_keeps_the_k_smallest_candidate_keys():
    keys = torch.tensor([[0.9, 0.1, 0.5, 0.05]])
    candidates = torch.tensor([[True, True, True, False]])
    # k = max(1, ⌊0.2 · 10⌋) = 2 of the candidates' keys {0.9, 0.1, 0.5} → threshold 0.5
    assert clip_cov_key_threshold(keys, candidates, num_valid=10, clip_ratio=0.2) == 0.5
    assert clip_cov_key_threshold(keys, candidates, num_valid=100, clip_ratio=0.2) == float("inf")  # k ≥ 3
    selected = clip_cov_mask(LOGP, ADV, MASK, clip_ratio=0.5, keys=torch.tensor([[0.3, 0.1, 0.2], [0.4, 0.5, 0.6]]),
                             key_threshold=0.2)
    assert not selected.any()  # the only candidate (0, 0) has key 0.3 > 0.2
