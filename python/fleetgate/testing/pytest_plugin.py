"""pytest fixtures fleetgate ships for its users' tests (registered as a pytest plugin).

- ``fake_openai``: a running :class:`~fleetgate.testing.fake_openai.FakeOpenAI` on default
  settings; configure one per test with ``@pytest.mark.fake_openai(config=FakeConfig(...))``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fleetgate.testing.fake_openai import FakeOpenAI


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fake_openai(config): settings for the fake_openai fixture")


@pytest.fixture
def fake_openai(request: pytest.FixtureRequest) -> Iterator[FakeOpenAI]:
    from fleetgate.testing.fake_openai import FakeOpenAI

    marker = request.node.get_closest_marker("fake_openai")
    config = marker.kwargs.get("config") if marker is not None else None
    with FakeOpenAI(config) as server:
        yield server
