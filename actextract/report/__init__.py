"""Report: a store in, pictures and one HTML page out; it reads stores and never runs an
extraction.

``writer`` is the one place that writes files (:func:`render`); ``pictures`` decides what to
draw for each layer on a shared ``canvas``, with ``classpictures`` (per-class aggregates),
``clusterpictures`` (clusterings) and ``evolution`` (a recording across epochs); ``figures``
are pure functions, arrays in, images out; ``page`` writes ``index.html``; ``graph`` draws the
model's graph; ``rebuild`` gives back the inputs and the model from the provenance.
"""

from actextract.report.graph import draw_graph
from actextract.report.pictures import RenderOptions
from actextract.report.writer import Report, render

__all__ = ["RenderOptions", "Report", "draw_graph", "render"]
