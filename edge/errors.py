"""The one exception type users see: a message that names the problem and the fix."""


class UserError(Exception):
    """Bad input or environment. The CLI prints the message without a traceback."""
