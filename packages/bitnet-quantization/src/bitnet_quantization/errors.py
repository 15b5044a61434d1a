"""The root of every typed error the bitnet packages raise; the CLI turns these into one clear line."""


class BitNetError(Exception):
    """A problem with the user's input or setup, with a message that says what to do."""

    exit_code = 2
