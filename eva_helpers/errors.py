"""User-facing errors: the CLI prints these as one line and exits non-zero, with no traceback."""


class EvaError(Exception):
    """A problem with the user's input or environment that they can fix; the message says how."""


class BadInputError(EvaError):
    """An input file or folder is unusable (names the file)."""


class IntegrityError(EvaError):
    """A file does not match its recorded checksum or size, or is truncated."""
