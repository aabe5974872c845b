"""The ``actextract`` command: click commands that parse options and call the library.

``commands`` holds the group and the run commands (layers, extract, train-demo), ``stores`` the
commands that read a store (info, verify, render, cluster), ``extract_options`` extract's
options by --help section, ``params`` the option types, the shared options (-v/-q,
--storage-options) and how every command reports a user error, ``help`` the click classes that
add -v/-q to every command and write sections and examples, ``output`` what --json prints.
"""

from actextract.cli.commands import main

__all__ = ["main"]
