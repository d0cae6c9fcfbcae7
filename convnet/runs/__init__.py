"""Run folders and what trains into them: one run, an ensemble's members, a sweep's trials,
scheduled on a pool of pinned processes or a Dask cluster."""
