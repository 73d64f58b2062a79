"""Corpora: the synthetic corpus, real-text preparation, and the manifest that describes both."""

from mixweight.data.manifest import Manifest, load_manifest

__all__ = ["Manifest", "load_manifest"]
