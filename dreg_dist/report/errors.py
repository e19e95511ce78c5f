"""What the report and its follow-up writers raise: one line each, for the command line."""


class ReportError(RuntimeError):
    """A report cannot be written (missing dependency, no runs); one line."""


class NothingToRun(ReportError):
    """A follow-up grid asked of records that need none (every rate bracketed, no wide interval,
    no selection to move): the answer, not a fault, so a study script can keep it (exit code 3)."""
