"""Readable names and descriptions of clusters, and how a clustering agrees with labels a corpus already has.

- :func:`top_terms`: each cluster's most distinctive words in the fitting sample, by class-based TF-IDF
  (a word's share of the cluster's words x log(1 + average words per cluster / the word's count in all
  clusters)): frequent in the cluster, rare elsewhere. English stop words are left out.
- :func:`nearest_examples`: the opening words of the sample documents nearest each centroid: what an
  encoder's clusters are about when no single word says it.
- :func:`cluster_names`: ``c<index>-<term>-<term>``, a valid domain (directory) name; the index keeps names
  unique and sorted in cluster order (clusters are numbered by size in the sample, largest first).
- :func:`adjusted_rand_index`: Hubert and Arabie's adjusted Rand index from a contingency table
  {label: {cluster: documents}}, so comparing a whole corpus needs a table, not a label per document.
"""

from __future__ import annotations

from math import comb

import numpy as np

TOP_TERMS = 8  # terms kept per cluster
NAME_TERMS = 2  # of which the name uses the first
TERM_CHARS = 12  # characters of a term in a name
EXAMPLES = 3  # nearest documents per cluster
OPENING_WORDS = 12  # words of each
OPENING_CHARS = 80  # and at most this many characters (markup's "words" are long)
TABLE_ROWS = 30  # labels printed in a contingency table (the largest)


def top_terms(texts: list[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """Per cluster, up to TOP_TERMS words by class-based TF-IDF; ties broken alphabetically."""
    from sklearn.feature_extraction.text import CountVectorizer

    from mixweight.data.embedders import EMBED_CHARS, WORD_PATTERN

    vectorizer = CountVectorizer(token_pattern=WORD_PATTERN, stop_words="english", min_df=2, max_features=50_000)
    try:
        counts = vectorizer.fit_transform([t[:EMBED_CHARS] for t in texts])
    except ValueError:  # no word occurs in two documents: nothing distinctive to say
        return [[] for _ in range(k)]
    terms = vectorizer.get_feature_names_out()
    per_cluster = np.zeros((k, len(terms)), dtype=np.float64)
    for c in range(k):
        rows = np.flatnonzero(labels == c)
        if len(rows):
            per_cluster[c] = np.asarray(counts[rows].sum(axis=0)).ravel()
    words = per_cluster.sum(axis=1, keepdims=True)
    average = per_cluster.sum() / k
    score = per_cluster / np.maximum(words, 1) * np.log1p(average / np.maximum(per_cluster.sum(axis=0), 1))
    result = []
    for c in range(k):
        order = np.lexsort((terms, -score[c]))  # by score, then alphabetically
        result.append([str(terms[i]) for i in order if per_cluster[c, i] > 0][:TOP_TERMS])
    return result


def opening_words(text: str) -> str:
    """The first OPENING_WORDS words (at most OPENING_CHARS characters), whitespace collapsed."""
    words = text.split()
    opening = " ".join(words[:OPENING_WORDS])
    cut = len(words) > OPENING_WORDS or len(opening) > OPENING_CHARS
    return opening[:OPENING_CHARS] + (" ..." if cut else "")


def nearest_examples(embeddings: np.ndarray, labels: np.ndarray, centroids: np.ndarray, texts: list[str]):
    """Per cluster, the opening words of its EXAMPLES sample documents nearest the centroid."""
    examples = []
    for c, centroid in enumerate(centroids):
        rows = np.flatnonzero(labels == c)
        distance = ((embeddings[rows] - centroid) ** 2).sum(axis=1)
        nearest = rows[np.lexsort((rows, distance))][:EXAMPLES]  # ties: the earlier sample document
        examples.append([opening_words(texts[i]) for i in nearest])
    return examples


def cluster_names(terms: list[list[str]]) -> list[str]:
    """c<i>-<term>-<term>, index zero-padded so names sort in cluster order; always a valid domain name."""
    from mixweight.data.names import name_problem

    width = len(str(len(terms) - 1))
    names = []
    for i, cluster_terms in enumerate(terms):
        slugs = ["".join(ch for ch in term.lower() if ch.isalnum())[:TERM_CHARS] for term in cluster_terms]
        name = "-".join([f"c{i:0{width}d}", *[s for s in slugs if s][:NAME_TERMS]])
        names.append(name if name_problem(name) is None else f"c{i:0{width}d}")
    return names


def describe(terms: list[str], examples: list[str]) -> str:
    parts = []
    if terms:
        parts.append("top terms: " + ", ".join(terms))
    if examples:
        parts.append("nearest documents: " + " | ".join(f'"{e}"' for e in examples))
    return "; ".join(parts) or "no distinctive terms"


def adjusted_rand_index(table: dict[str, dict[str, int]]) -> float:
    """ARI of a contingency table; 1.0 when both partitions are trivial in the same way (as scikit-learn)."""
    cells = [n for row in table.values() for n in row.values()]
    total = sum(cells)
    rows = [sum(row.values()) for row in table.values()]
    columns: dict[str, int] = {}
    for row in table.values():
        for cluster, n in row.items():
            columns[cluster] = columns.get(cluster, 0) + n
    together = sum(comb(n, 2) for n in cells)
    same_label = sum(comb(n, 2) for n in rows)
    same_cluster = sum(comb(n, 2) for n in columns.values())
    pairs = comb(total, 2)
    expected = same_label * same_cluster / pairs if pairs else 0.0
    best = (same_label + same_cluster) / 2
    if best == expected:
        return 1.0
    return (together - expected) / (best - expected)


def contingency_lines(table: dict[str, dict[str, int]], clusters: list[str], field: str) -> list[str]:
    """The table as aligned text: a row per label (the TABLE_ROWS largest), a column per cluster."""
    labels = sorted(table, key=lambda label: (-sum(table[label].values()), label))
    shown = labels[:TABLE_ROWS]
    head = [field, *clusters]
    body = [[label, *[str(table[label].get(c, 0)) for c in clusters]] for label in shown]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head, *body]]
    if len(labels) > len(shown):
        lines.append(f"(and {len(labels) - len(shown)} smaller label(s); all of them are in manifest.json)")
    return lines


def report_lines(clustering: dict) -> list[str]:
    """What `data prepare` prints about a clustered corpus: every cluster, and the comparison if asked for."""
    clusters = clustering.get("clusters") or {}
    how = f"from {clustering['from']}" if clustering.get("from") else f"seed {clustering.get('seed')}"
    lines = [
        f"domains by clustering: {len(clusters)} clusters ({clustering.get('embed')} embedding, k-means, {how}; "
        f"the clustering is in {clustering.get('path')}/)"
    ]
    for name, info in clusters.items():
        lines.append(f"  {name}: {info['documents']} documents ({100 * info['share']:.1f}%); {info['description']}")
    if clustering.get("empty_documents"):
        lines.append(f"  {clustering['empty_documents']} empty document(s) skipped (in no domain)")
    compare = clustering.get("compare")
    if compare:
        lines.append(
            f"clusters against --compare-field {compare['field']}: adjusted Rand index {compare['ari']:.4f} "
            "(1: the same partition, 0: no better than chance); documents per label and cluster:"
        )
        lines += ["  " + line for line in contingency_lines(compare["table"], list(clusters), compare["field"])]
    return lines
