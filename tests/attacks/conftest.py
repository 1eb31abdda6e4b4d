"""Fixtures of the attack tests: a tiny trained IQA model, a surrogate of another seed, held-out
images, disjoint images to fit the UAP on, and the fitted UAP (module-scoped; the models are cached)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.iqa_fixtures import degrade, degraded_test_set, small_trained_model, synthetic_images
from training.gate.attacks import UAP, create_attack


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return small_trained_model(0)


@pytest.fixture(scope="module")
def surrogate() -> nn.Module:
    return small_trained_model(1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """24 held-out noisy images, scores spread over the range (both L_mid branches present)."""
    return degraded_test_set(24, 64)[0]


@pytest.fixture(scope="module")
def fit_images() -> torch.Tensor:
    """Images for fitting the UAP, disjoint from ``images``."""
    return degrade(synthetic_images(64, 64, seed=55), torch.Generator().manual_seed(77))[0]


@pytest.fixture(scope="module")
def fitted_uap(surrogate: nn.Module, fit_images: torch.Tensor) -> UAP:
    uap = create_attack("uap", surrogate=surrogate, objective="mid", size=64)
    assert isinstance(uap, UAP)
    return uap.fit(images=fit_images)
