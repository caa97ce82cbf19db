"""The one exception that means "the user asked for something that cannot be done"."""


class UsageError(Exception):
    """Bad input (an option, a file, a folder): the command lines print its message as one
    line and exit with status 2. Every other exception is a bug and shows its traceback."""
