"""Derived FAISS indexes: rebuildable from the store, written atomically with a manifest."""
