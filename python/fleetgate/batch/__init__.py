"""Batch API jobs that never lose or repeat a request (see :mod:`fleetgate.batch.jobs`)."""

from fleetgate.batch.errors import BatchInputError, JobBusy, ResultsExpired
from fleetgate.batch.jobs import BatchJobs
from fleetgate.batch.report import CollectSummary, JobReport
from fleetgate.batch.split import Problem, split_file
from fleetgate.batch.state import Chunk, Job

__all__ = ["BatchInputError", "BatchJobs", "Chunk", "CollectSummary", "Job", "JobBusy", "JobReport", "Problem",
           "ResultsExpired", "split_file"]
