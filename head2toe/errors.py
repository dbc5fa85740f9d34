"""User-facing errors: one clear line that names the bad value and what is accepted."""


class H2TError(ValueError):
    """Bad user input or missing prerequisite. The CLI prints it as one line, no traceback."""


class ProbeDiverged(H2TError):
    """A probe's loss or weights became NaN/Inf: its configuration (named) cannot train on these features."""
