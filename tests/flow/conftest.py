"""Shared tiny pieces for the flow tests: a small random digits model and a hand-checkable reward."""

from __future__ import annotations

import pytest
import torch

from grpokit.flow.digits import DigitsFlowModel, DigitsVelocityNet


@pytest.fixture
def tiny_digits_model() -> DigitsFlowModel:
    torch.manual_seed(0)
    return DigitsFlowModel(DigitsVelocityNet(hidden=32, blocks=1, time_dims=8))


def brightness(completions, **kwargs):
    """A reward that any model can move: the mean pixel value of each image."""
    return [float(torch.as_tensor(image).float().mean()) for image in completions]


@pytest.fixture
def brightness_reward():
    return brightness
