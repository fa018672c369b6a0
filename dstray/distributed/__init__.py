"""The Ray layer of dstray: the only package that imports ``ray``; thin adapters of the pure halves.

- :mod:`.fit`: Ray Train fits one DST model per defect type, concurrently (``dst.fit.fit_loop``).
- :mod:`.generate`: Ray Data maps shards of the plan through actors (``dst.synth.write_shard``).
- :mod:`.train_seg`: Ray Train (data parallel, Ray Data ingestion) runs ``seg.train.train_loop``.
- :mod:`.tune_seg`: Ray Tune trials run ``seg.train.train_loop``; :mod:`.space` parses search spaces.
- :mod:`.pipeline`: the one-command pipeline; :mod:`.experiments`: the paper's experiments, cell by cell.
- :mod:`.runtime`: connecting to a cluster, GPU detection, checkpoint storage, a fault hook for tests.

Importing this package does not start Ray.
"""
