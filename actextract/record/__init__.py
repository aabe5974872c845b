"""Record: a fixed probe set's activations while a model trains, one epoch at a time, into
one store with an epoch axis (:class:`Recorder`; ``recording`` creates or continues that
store; ``train`` trains the demo model and records it).
"""

from actextract.record.recorder import Recorder

__all__ = ["Recorder"]
