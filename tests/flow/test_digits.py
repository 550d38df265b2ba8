from __future__ import annotations

import pytest
import torch

from grpokit.flow import digits
from grpokit.flow.digits import DigitsRecipe, DigitsVelocityNet, flow_matching_loss, load_digit_images


def test_digit_images_are_mapped_to_minus_one_one():
    images, labels = load_digit_images()
    assert images.shape == (1797, 64) and labels.shape == (1797,)
    assert images.min().item() == -1.0 and images.max().item() == 1.0
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_flow_matching_target_is_noise_minus_data():
    net = DigitsVelocityNet(hidden=16, blocks=1, time_dims=8)
    torch.nn.init.zeros_(net.out.weight)
    torch.nn.init.zeros_(net.out.bias)  # the net now predicts v = 0
    x0, noise = torch.full((2, 64), 0.5), torch.full((2, 64), -1.0)
    loss = flow_matching_loss(net, x0, torch.tensor([0, 1]), torch.tensor([0.3, 0.9]), noise)
    assert loss.item() == pytest.approx(1.5**2)  # (ε − x_0)² = (−1 − 0.5)²


def test_a_few_flow_matching_steps_reduce_the_loss():
    recipe = DigitsRecipe(hidden=32, blocks=1, steps=40, batch_size=32, seed=0)
    images, labels = load_digit_images()
    generator = torch.Generator().manual_seed(5)
    t, noise = torch.rand(256, generator=generator), torch.randn(256, 64, generator=generator)
    torch.manual_seed(recipe.seed)
    untrained = DigitsVelocityNet(recipe.hidden, recipe.blocks)
    trained = digits.train_digits_velocity(recipe)
    with torch.no_grad():
        before = flow_matching_loss(untrained, images[:256], labels[:256], t, noise).item()
        after = flow_matching_loss(trained, images[:256], labels[:256], t, noise).item()
    assert after < 0.8 * before


def test_pretrained_model_is_cached_and_reloaded_without_training(tmp_path, monkeypatch):
    recipe = DigitsRecipe(hidden=16, blocks=1, steps=3, batch_size=8)
    first = digits.pretrained_digits_model(recipe, cache=tmp_path, progress=False)
    assert len(list(tmp_path.glob("digits_velocity_*.pt"))) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model must not be trained again")

    monkeypatch.setattr(digits, "train_digits_velocity", no_training)
    second = digits.pretrained_digits_model(recipe, cache=tmp_path, progress=False)
    for a, b in zip(first.net.parameters(), second.net.parameters()):
        assert torch.equal(a, b)
    other = DigitsRecipe(hidden=16, blocks=1, steps=4, batch_size=8)
    with pytest.raises(AssertionError, match="must not be trained"):
        digits.pretrained_digits_model(other, cache=tmp_path, progress=False)  # another recipe, another key
