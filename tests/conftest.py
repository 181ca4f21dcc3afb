"""Shared fixtures: tiny seeded CNNs (CPU, milliseconds) and the embedded model (session-scoped)."""

from __future__ import annotations

import os
from collections import OrderedDict

import pytest
import torch
from torch import nn

# Test workloads are tiny: one thread avoids OpenMP spin-waiting, which makes a 224x224 forward
# pass of the embedded model 5-20x slower on a small, shared machine.
torch.set_num_threads(1)

NUM_CLASSES = 5
FEATURE_CHANNELS = 6

# CI (.ci/run) has ../shared/data and every extra it installs: there a skipped test means
# something it should have tested is missing, so the skip fails the run. Skips that depend on
# what is installed by design (a test of the error without an optional package) are marked
# ``either_way`` and stay skips.
STRICT_SKIPS = os.environ.get("WSOLKIT_STRICT_SKIPS") == "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "either_way: skipped by design in some environments (allowed in CI)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    outcome = yield
    report = outcome.get_result()
    if STRICT_SKIPS and report.skipped and item.get_closest_marker("either_way") is None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, which WSOLKIT_STRICT_SKIPS=1 (CI) forbids: {reason}"


class TinyCNN(nn.Module):
    """conv(3->4) ReLU conv(4->6, stride 2) ReLU -> global average pool -> fc(6 -> 5).

    Layer names: ``features.conv1``, ``features.relu1``, ``features.conv2``, ``features.act``,
    ``pool``, ``fc``. With ``inplace=True`` both ReLUs modify their input in place (so the
    output of ``features.conv2`` is overwritten by ``features.act``).
    """

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            relu1=nn.ReLU(inplace=inplace),
            conv2=nn.Conv2d(4, FEATURE_CHANNELS, 3, stride=2, padding=1),
            act=nn.ReLU(inplace=inplace),
        ))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_CHANNELS, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(images)).flatten(1))


class BNDropoutCNN(nn.Module):
    """TinyCNN with BatchNorm after each conv and Dropout before fc (train/eval sensitive)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(3, 4, 3, padding=1),
            bn1=nn.BatchNorm2d(4),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(4, FEATURE_CHANNELS, 3, stride=2, padding=1),
            bn2=nn.BatchNorm2d(FEATURE_CHANNELS),
            act=nn.ReLU(),
        ))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(FEATURE_CHANNELS, NUM_CLASSES)
        with torch.no_grad():  # running stats far from (0, 1), so train and eval mode differ
            for bn in (self.features.bn1, self.features.bn2):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 2.0)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.2, 0.2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(images)).flatten(1)))


class RaisingCNN(TinyCNN):
    """Raises after ``features`` has run (so after any hooked feature layer)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.features(images)
        raise RuntimeError("boom after the features")


class SharedReluCNN(nn.Module):
    """One ReLU module (``relu``) used twice in the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, FEATURE_CHANNELS, 3, stride=2, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURE_CHANNELS, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.relu(self.conv2(self.relu(self.conv1(images))))
        return self.fc(self.pool(features).flatten(1))


def seeded(cls: type[nn.Module], seed: int = 0, **kwargs: object) -> nn.Module:
    torch.manual_seed(seed)
    return cls(**kwargs).eval()


@pytest.fixture
def tiny_model() -> TinyCNN:
    return seeded(TinyCNN)


@pytest.fixture
def inplace_model() -> TinyCNN:
    return seeded(TinyCNN, inplace=True)


@pytest.fixture
def bn_model() -> BNDropoutCNN:
    return seeded(BNDropoutCNN)


@pytest.fixture
def raising_model() -> RaisingCNN:
    return seeded(RaisingCNN)


@pytest.fixture
def shared_relu_model() -> SharedReluCNN:
    return seeded(SharedReluCNN)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 16, 16, generator=generator)


@pytest.fixture(scope="session")
def embedded_model():
    """The embedded EfficientNet-Lite0 (loads in about a second); never modify it in a test."""
    import wsolkit

    return wsolkit.load_model()
