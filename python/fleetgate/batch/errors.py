"""Why a batch job refuses: an input the Batch API would refuse, a job another process
watches, results OpenAI no longer keeps."""

from __future__ import annotations

from pathlib import Path

from fleetgate.batch.split import Problem
from fleetgate.errors import FleetgateError

__all__ = ["BatchInputError", "JobBusy", "ResultsExpired"]


class BatchInputError(FleetgateError, ValueError):
    """The input has lines the Batch API would refuse; nothing was uploaded."""

    def __init__(self, problems: list[Problem], report: Path | None) -> None:
        self.problems = problems
        self.report = report
        shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        where = f"; all of them in {report}" if report else ""
        super().__init__(f"{len(problems)} input lines cannot be sent: {shown}{more}{where}. Fix them, or submit "
                         "with skip_bad_lines=True (--skip-bad-lines) to set them aside")


class JobBusy(FleetgateError):
    """Another process watches the job (it holds the job's lease)."""


class ResultsExpired(FleetgateError):
    """A batch's output file is gone (OpenAI deletes them after their expiry)."""
