"""Batch API jobs that never lose or repeat a request (see :mod:`fleetgate.batch.jobs`)."""

from fleetgate.batch.jobs import BatchInputError, BatchJobs, CollectSummary, JobBusy, JobReport, ResultsExpired
from fleetgate.batch.split import Problem, split_file
from fleetgate.batch.state import Chunk, Job

__all__ = ["BatchInputError", "BatchJobs", "Chunk", "CollectSummary", "Job", "JobBusy", "JobReport", "Problem",
           "ResultsExpired", "split_file"]
