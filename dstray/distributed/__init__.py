"""The Ray layer of dstray: the only package that imports ``ray``.

- :mod:`.fit`: Ray Train fits one DST model per defect type, concurrently.
- :mod:`.generate`: Ray Data maps histmatch + TransferNet over backgrounds into Parquet.
- :mod:`.runtime`: connecting to a cluster, GPU detection.

Importing this package does not start Ray.
"""
