"""What a batch job has done so far (:class:`JobReport`), and what collecting it wrote
(:class:`CollectSummary`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fleetgate.batch.state import Chunk, Job

__all__ = ["CollectSummary", "JobReport"]


@dataclass(frozen=True, slots=True)
class JobReport:
    """What a job has done so far."""

    job: Job
    chunks: list[Chunk]
    #: Lines answered, dead-lettered, and still on their way.
    succeeded: int
    dead: int
    pending: int
    cost: float
    results_expire_at: float | None
    warnings: tuple[str, ...]

    @property
    def done(self) -> bool:
        return self.job.status in ("done", "cancelled")

    def render(self) -> str:
        job = self.job
        states: dict[str, int] = {}
        for c in self.chunks:
            states[c.state] = states.get(c.state, 0) + 1
        lines = [
            f"job {job.id}: {job.status}, {job.model} on {job.endpoint}, {job.lines} lines"
            + (f" ({job.rejected} rejected at submission)" if job.rejected else ""),
            f"  lines: {self.succeeded} answered, {self.dead} dead-lettered, {self.pending} on their way",
            "  batches: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())),
            f"  cost: ${self.cost:.4f} at the batch price",
        ]
        held = sorted({c.held for c in self.chunks if c.held and c.state == "uploaded"})
        if held:
            lines.append("  waiting: " + "; ".join(held))
        if self.results_expire_at is not None:
            lines.append("  results expire " + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.results_expire_at)))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class CollectSummary:
    output: Path
    dead_letters: Path
    answered: int
    dead: int
