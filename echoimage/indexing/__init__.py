"""The write side: what builds, updates and repairs a catalogue's store and index.

* `work`: one catalogue image's work (fetch or read, decode, extract), picklable for
  worker processes and cluster tasks;
* `runs`: a run's summary and its record in the store, and writing a batch of results;
* `runner`: the runner and its process pool (a backend such as `dask_backend` can take the
  processing over);
* `build`, `update`, `remove`, `verify`, `status`: the entry points.

Nothing here reads catalogue files: the entry points are given a `SourceReader`
(`echoimage.catalogue.reader`), as the runner is given its backend.
"""
