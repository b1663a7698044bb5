"""Grouping utterances by voice: agglomerative clustering of speaker embeddings.

Each utterance starts as its own cluster; the two clusters whose centroids are most alike (cosine)
merge, again and again, while they are alike enough (`threshold`) or while there are more clusters
than the speakers a client allows (`max_speakers`). Centroids are sums of embeddings weighted by
each utterance's duration, so a long utterance counts for more than a cough. A recording has tens to
hundreds of utterances, so the plain O(n^3) loop costs milliseconds.
"""

from __future__ import annotations

import numpy as np

from edged.pipelines.speaker.encoder import unit


def cluster_speakers(embeddings: np.ndarray, weights: np.ndarray, threshold: float,
                     max_speakers: int = 0) -> np.ndarray:
    """A label per row of `embeddings` (unit vectors): 0, 1, ... numbered by first appearance.
    `max_speakers` > 0 caps the number of labels."""
    count = len(embeddings)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    sums = embeddings.astype(np.float64) * np.asarray(weights, dtype=np.float64)[:, None]
    members = [[i] for i in range(count)]
    while len(members) > 1:
        centroids = unit(sums)
        similarity = centroids @ centroids.T
        np.fill_diagonal(similarity, -np.inf)
        a, b = np.unravel_index(int(np.argmax(similarity)), similarity.shape)
        too_many = 0 < max_speakers < len(members)
        if similarity[a, b] < threshold and not too_many:
            break
        a, b = min(a, b), max(a, b)
        sums[a] += sums[b]
        members[a] += members[b]
        sums = np.delete(sums, b, axis=0)
        del members[b]
    labels = np.zeros(count, dtype=np.int64)
    for cluster in members:
        labels[cluster] = min(cluster)
    _, first = np.unique(labels, return_index=True)
    order = {int(labels[i]): rank for rank, i in enumerate(sorted(first))}
    return np.array([order[int(x)] for x in labels], dtype=np.int64)
