"""The exception types the CLI turns into a one-line message and an exit status."""

#: Exit status of a training command stopped by SIGTERM or SIGUSR1 after writing its checkpoint (EX_TEMPFAIL of
#: sysexits.h: "try again later"). The same command resumes; the SLURM profile resubmits such jobs.
EXIT_RESUME = 75


class StfusionError(Exception):
    """A problem with the user's input (params, data, strategies, checkpoints) that has a plain explanation."""


class ResumableStop(Exception):
    """Training stopped on request (a signal) after writing a checkpoint: rerunning the command resumes it."""
