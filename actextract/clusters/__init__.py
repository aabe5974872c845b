"""Clusters: k-means of one stored layer's rows, and the results a store keeps of it.

``kmeans`` holds the algorithms (streaming PCA, k-means++, mini-batch k-means; pure torch,
nothing of stores); ``job`` streams a layer through them (:func:`cluster`); ``results`` is the
schema of ``clusters/<layer>/<settings>`` in the store, its writer and reader
(:func:`clusterings`) and the swap that puts a new result in place; ``rows`` writes the
per-row arrays and scores the clusters against the labels.
"""

from actextract.clusters.job import cluster
from actextract.clusters.results import Clustering, Settings, clusterings

__all__ = ["Clustering", "Settings", "cluster", "clusterings"]
