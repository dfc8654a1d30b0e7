"""The ``stfusion`` command line: one declaration per command, one dispatcher."""

from stfusion.cli.app import main

__all__ = ["main"]
