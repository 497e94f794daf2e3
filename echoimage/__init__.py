"""EchoImage: a precomputed-index search engine for similar and near-duplicate images."""

__version__ = "0.1.0"
