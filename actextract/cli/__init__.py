"""The ``actextract`` command: click commands that parse options and call the library.

``commands`` holds the group and the run commands (layers, extract, train-demo), ``stores`` the
commands that read a store (info, verify, render, cluster), ``params`` the option types and
how every command reports a user error.
"""

from actextract.cli.commands import main

__all__ = ["main"]
