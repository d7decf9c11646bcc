"""The facility's fabric: NCCL over RoCE/InfiniBand (``nccl``, ``spec``) and the GPUDirect Storage data path
(``gds``: cuFile configuration, node probe, read backends; ``tensorfile``: the aligned tensor file format)."""
