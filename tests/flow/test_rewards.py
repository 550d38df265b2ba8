from __future__ import annotations

import pytest
import torch

from grpokit.flow import rewards
from grpokit.flow.digits import load_digit_images
from grpokit.flow.rewards import DigitScorer, ScorerRecipe, _gold_net
from grpokit.rewards import RewardRunner, load_reward


@pytest.fixture(scope="module")
def hand_scorer() -> DigitScorer:
    proxy = torch.nn.Linear(64, 10)
    torch.nn.init.zeros_(proxy.weight)
    with torch.no_grad():
        proxy.bias.copy_(torch.arange(10.0))
        proxy.weight[3].fill_(1.0)  # class 3's logit grows with ink
    torch.manual_seed(0)
    state = {"proxy": proxy.state_dict(), "gold": _gold_net(16).state_dict(), "realism_threshold": 3.0}
    return DigitScorer(state, ScorerRecipe(gold_hidden=16))


def test_proxy_is_the_linear_classifier_margin(hand_scorer):
    blank = -torch.ones(2, 8, 8)  # z_j = j for every class but 3, z_3 = 3 − 64
    margins = hand_scorer.proxy(blank, torch.tensor([9, 0]))
    assert margins.tolist() == pytest.approx([9 - 8, 0 - 9])
    inked = torch.ones(1, 8, 8)  # z_3 = 3 + 64
    assert hand_scorer.proxy(inked, torch.tensor([3])).item() == pytest.approx(67 - 9)


def test_real_digits_are_realistic_and_flat_images_are_not(hand_scorer):
    images, labels = load_digit_images()
    assert hand_scorer.realistic(images[:20]).tolist() == [1.0] * 20
    assert hand_scorer.realistic(torch.zeros(1, 64)).item() == 0.0
    assert hand_scorer.diversity(images[labels == 4][:50], labels[labels == 4][:50]) == pytest.approx(
        1.0, abs=0.15
    )
    collapsed = images[labels == 4][:1].repeat(5, 1)
    assert hand_scorer.diversity(collapsed, torch.full((5,), 4)) == 0.0


def test_digit_rewards_run_through_the_reward_runner(hand_scorer, monkeypatch):
    monkeypatch.setattr(rewards, "digit_scorer", lambda **kwargs: hand_scorer)
    runner = RewardRunner(
        [
            load_reward("grpokit.flow.rewards:digits_proxy", name="proxy"),
            load_reward("grpokit.flow.rewards:digits_gold", name="gold"),
        ]
    )
    images, labels = load_digit_images()
    result = runner.score(
        prompts=["digit"] * 3,
        completions=list(images[:3].reshape(3, 8, 8)),
        group_ids=[0, 0, 1],
        columns={"label": labels[:3].tolist()},
    )
    expected_proxy = hand_scorer.proxy(images[:3], labels[:3])
    assert torch.allclose(result.matrix[:, 0], expected_proxy)
    assert set(result.matrix[:, 1].tolist()) <= {0.0, 1.0}


def test_scorer_classifiers_are_trained_once_and_cached(tmp_path):
    recipe = ScorerRecipe(proxy_steps=30, gold_steps=150, gold_hidden=16)
    scorer = rewards.digit_scorer(recipe, cache=tmp_path)
    assert len(list(tmp_path.glob("digits_scorer_*.pt"))) == 1
    images, labels = load_digit_images()
    assert scorer.gold_correct(images[:300], labels[:300]).mean().item() > 0.5
    assert (scorer.proxy(images[:300], labels[:300]) > 0).float().mean().item() > 0.5
    assert rewards.digit_scorer(recipe, cache=tmp_path) is scorer
