"""Profiles -> Dask clusters: LocalCluster (the embedded default) or dask-jobqueue SLURMCluster."""
