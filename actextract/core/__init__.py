"""The ground floor: what every family of actextract shares, importing nothing of it but
:mod:`actextract.errors`. Layer names and their globs (``names``), what each axis of a layer's
output means (``axes``), the ``device`` and ``precision`` rules (``devices``), the dtypes a
store may hold (``dtypes``), versions and provenance (``versions``), words the terminal views
share (``text``), and ``module:attr`` references to user code (``references``).
"""

from actextract.core.devices import PRECISIONS, autocast, resolve_device
from actextract.core.dtypes import STORAGE_DTYPES
from actextract.core.names import match_names, names_option
from actextract.core.text import human_bytes
from actextract.core.versions import __version__, software

__all__ = [
    "PRECISIONS",
    "STORAGE_DTYPES",
    "__version__",
    "autocast",
    "human_bytes",
    "match_names",
    "names_option",
    "resolve_device",
    "software",
]
