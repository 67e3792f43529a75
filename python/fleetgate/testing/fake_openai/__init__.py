"""A local OpenAI-compatible server that behaves like the real one under load and
failure: limits enforced as OpenAI does, faults on a schedule, batches that take time,
expire, fail per line and come back out of order.

Needs the ``testing`` extra (``pip install 'fleetgate[testing]'``) for aiohttp.
"""

from __future__ import annotations

from fleetgate import _extras

if _extras.missing("aiohttp"):
    raise ImportError(f"fleetgate.testing's FakeOpenAI needs aiohttp, which is not installed: {_extras.TESTING}",
                      name="aiohttp")

from fleetgate.testing.fake_openai.config import (AzureShape, BackgroundTimings, BatchTimings, FakeConfig, Fault,
                                                  Latency, ModelLimits, TierBehaviour, load_config)
from fleetgate.testing.fake_openai.server import FakeOpenAI, ModelCounters

__all__ = ["AzureShape", "BackgroundTimings", "BatchTimings", "FakeConfig", "FakeOpenAI", "Fault", "Latency",
           "ModelCounters", "ModelLimits", "TierBehaviour", "load_config"]
