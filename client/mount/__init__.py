"""`cachectl mount`: a read-only FUSE view of a model prefix, read through the cache group.

The package is split along the data flow: `namespace.py` (pure: listing -> tree, one inode per
object version), `readahead.py` (pure: sequential detection), `blocks.py` (blocks in memory
under one budget, fetched through CacheClient), `fs.py` (the pyfuse3 operations),
`mountpoint.py` (stale mounts, kernel read-ahead), `stats.py` (metrics and the summary) and
`run.py` (the lifecycle). Only `fs.py` and `run.py` import pyfuse3 (the `mount` extra).
"""
