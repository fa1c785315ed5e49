"""User-facing errors: one line, exit status 2, no traceback (see ``clipprobe.cli``)."""


class UserError(Exception):
    """Bad input from the user: a missing file, an unknown name, a bad option.

    The message must name the problem and the fix, on one line. The CLI prints it as
    ``clipprobe: error: <message>`` and exits with status 2.
    """
