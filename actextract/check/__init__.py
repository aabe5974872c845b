"""Check: what a store holds and whether it is whole, as ``actextract info`` and ``actextract
verify`` say it. :func:`store_info` (info: arrays, sizes, labels, statistics, clusterings,
status, and the damage the quick check finds) and :func:`verify` (every chunk read back;
``repair`` mends what the root attributes allow). It reads the store, its statistics and its
clusterings, so it sits above ``store``, ``stats`` and ``clusters``; nothing below imports it.
"""

from actextract.check.info import store_info
from actextract.check.report import Problem, VerifyReport, format_verify
from actextract.check.verification import count_chunks, verify

__all__ = ["Problem", "VerifyReport", "count_chunks", "format_verify", "store_info", "verify"]
