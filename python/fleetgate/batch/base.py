"""What every stage of a batch job shares: the gateway's ``[batch]`` settings, the job
record, the API client, the budget holds and the pace of uploads and creations."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import openai

from fleetgate._core import BudgetReservation, Limiter, Quota
from fleetgate.batch.report import JobReport
from fleetgate.batch.state import Job, JobStore, new_owner, store_for
from fleetgate.budget.guard import Budgets
from fleetgate.config import GatewayConfig
from fleetgate.deployments import MODEL_HEADER, UPSTREAM_HEADER, Deployments
from fleetgate.errors import FleetgateError
from fleetgate.metrics import GatewayMetrics
from fleetgate.prices import PriceTable
from fleetgate.privacy import Privacy
from fleetgate.scope import Scope

__all__ = ["ENDED", "BatchGateway", "JobsBase", "jitter"]


class BatchGateway(Protocol):
    """What batch jobs ask of the gateway they run through (:class:`fleetgate.Gateway`)."""

    config: GatewayConfig
    limiter: Limiter
    budgets: Budgets
    prices: PriceTable
    metrics: GatewayMetrics | None
    privacy: Privacy
    deployments: Deployments

    def openai(self, **kwargs: Any) -> openai.OpenAI: ...

ENDED = ("completed", "expired", "cancelled")


def jitter(seconds: float) -> float:
    return seconds * random.uniform(0.8, 1.2)


class JobsBase:
    """The state a gateway's batch jobs share, and the small steps every stage takes."""

    def __init__(self, gateway: BatchGateway, store: JobStore | None = None, *, directory: str | Path | None = None,
                 **client_options: Any) -> None:
        self.gateway = gateway
        self.settings = gateway.config.batch
        self.directory = Path(directory) if directory is not None else self.settings.state_directory()
        self.store = store or store_for(gateway.config.redis_url, self.directory)
        self.owner = new_owner()
        self._client_options = client_options
        self._client: openai.OpenAI | None = None
        self._holds: dict[tuple[str, str], BudgetReservation] = {}
        # Sliding windows: any burst within the minute's allowance goes at once.
        self._uploads = Quota("batch-uploads", requests_per_minute=self.settings.uploads_per_minute,
                              algorithm="sliding_window")
        self._creations = Quota("batch-creations", requests_per_minute=self.settings.creations_per_minute,
                                algorithm="sliding_window")
        #: Batches found at each upstream (by its deployment, "" for the client's base URL).
        self._found: dict[str, dict[tuple[str, str, str], str]] = {}
        #: Unix seconds (replaceable, for tests).
        self.clock: Callable[[], float] = time.time
        #: Called with a :class:`JobReport` after each pass of :meth:`watch`.
        self.on_progress: Callable[[JobReport], object] | None = None

    @property
    def client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = self.gateway.openai(**self._client_options)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self.store.close()

    def _upstream(self, job: Job) -> dict[str, str]:
        """The headers that send `job`'s files and batches to one deployment of its model
        (``[deployments]``), the same one from every process: of those of its first
        priority, one drawn by the job's id. {}: its model has no deployments; they go to
        the client's base URL. Once made, a file or batch is found where it is held
        (:mod:`fleetgate.path._async.holders`)."""
        found = self.gateway.deployments.of(job.model)
        if not found:
            return {}
        first = min(d.settings.priority for d in found)
        eligible = sorted((d.name for d in found if d.settings.priority == first))
        drawn = int.from_bytes(hashlib.blake2b(job.id.encode(), digest_size=8).digest(), "big")
        return {MODEL_HEADER: job.model, UPSTREAM_HEADER: eligible[drawn % len(eligible)]}

    def _folder(self, job_id: str) -> Path:
        return self.directory / job_id

    def _scope(self, job: Job) -> Scope:
        return Scope(feature=job.feature or None, user=job.user or None, team=job.team or None)

    def _job(self, job_id: str) -> Job:
        job = self.store.job(job_id)
        if job is None:
            raise FleetgateError(f"no batch job {job_id!r} in {self._where()}: list them with status()")
        return job

    def _where(self) -> str:
        return "Redis" if self.gateway.config.redis_url else str(self.directory)
