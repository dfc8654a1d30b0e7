"""The one exception type the CLI turns into a one-line message."""


class StfusionError(Exception):
    """A problem with the user's input (params, data, strategies, checkpoints) that has a plain explanation."""
