"""How a step's command runs. :class:`~mltf_flow.launch.base.Launcher` is the extension point:
the local subprocess launcher lives here; Dask, SLURM and DDP launchers plug in the same way."""

from mltf_flow.launch.base import Launcher, LaunchRequest, LaunchResult

__all__ = ["LaunchRequest", "LaunchResult", "Launcher"]
