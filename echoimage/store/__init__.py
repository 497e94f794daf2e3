"""The SQL store: the source of truth of every catalogue image and its features."""
