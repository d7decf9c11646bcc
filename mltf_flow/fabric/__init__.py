"""The facility's fabric: NCCL over RoCE/InfiniBand (``nccl``); GPUDirect Storage comes later."""
