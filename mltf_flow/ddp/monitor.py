"""System metrics of one rank, logged into the step's MLflow run under the rank's own node id.

MLflow's ``SystemMetricsMonitor`` is started by ``mlflow.start_run`` in the process that owns the run
(rank 0) and reports *every* GPU NVML sees on the node (mlflow/mlflow#13398). Here each rank's launcher
task runs one monitor with ``node_id = rank-<r>`` (metrics ``system/rank-<r>/...``), and the GPU part
reports only the rank's own device, named by its NVML index. CPU, memory, disk and network figures
are the node's (psutil), as MLflow's are. A last sample is logged when the rank ends, so short runs
have figures too.

A rank's command starts first and its monitor alongside (:meth:`RankMonitor.start_in_background`):
the monitor imports MLflow and opens the tracking store (seconds on a loaded node, more with a fresh
sqlite store), which must not delay the rank's training.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

_log = logging.getLogger(__name__)

#: Seconds :meth:`RankMonitor.finish` waits for a monitor still starting (importing MLflow) when the
#: command has already ended; past that the rank ends without its last sample.
START_WAIT_S = 120.0


def _own_gpu_monitor(device: str) -> Any:
    """A GPUMonitor restricted to ``device`` (a CUDA_VISIBLE_DEVICES entry: index or ``GPU-…`` UUID)."""
    import pynvml
    from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

    class OwnGPUMonitor(GPUMonitor):
        def __init__(self) -> None:
            super().__init__()  # type: ignore[no-untyped-call]
            if device.startswith(("GPU-", "MIG-")):
                handle = pynvml.nvmlDeviceGetHandleByUUID(device)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
            self.index = int(pynvml.nvmlDeviceGetIndex(handle))
            self.gpu_handles = [handle]
            self.num_gpus = 1

        def collect_metrics(self) -> None:
            super().collect_metrics()  # type: ignore[no-untyped-call]
            if self.index:  # the parent names the one handle gpu_0_*: use the device's real index
                for key in [k for k in self._metrics if k.startswith("gpu_0_")]:
                    self._metrics[f"gpu_{self.index}_" + key[len("gpu_0_"):]].extend(self._metrics.pop(key))

    return OwnGPUMonitor()


class RankMonitor:
    """Start with :meth:`start`, end with :meth:`finish` (never raises: metrics must not fail training)."""

    def __init__(self, run_id: str, tracking_uri: str, node_id: str, device: str | None, interval: float) -> None:
        self.run_id, self.tracking_uri, self.node_id = run_id, tracking_uri, node_id
        self.device, self.interval = device, interval
        self.monitor: Any = None
        self._starting: threading.Thread | None = None

    def start_in_background(self, _pid: int = 0) -> None:
        """:meth:`start` in a thread: the caller (the rank's launcher task) goes on at once. Fits
        ``run_streaming``'s ``on_start`` (the command's pid is not needed)."""
        self._starting = threading.Thread(target=self.start, name=f"mltf-monitor-{self.node_id}", daemon=True)
        self._starting.start()

    def start(self) -> RankMonitor:
        # MLflow's monitor logs its start, stop and "Skip logging GPU metrics" at INFO on the worker's stderr,
        # which is the user's console on the embedded default: our warnings below say what matters.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        try:
            from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=self.interval, node_id=self.node_id,
                tracking_uri=self.tracking_uri, resume_logging=True,
            )
            # MLflow reads MLFLOW_SYSTEM_METRICS_NODE_ID from the worker's environment first: ours wins.
            monitor.node_id = self.node_id
            others = [m for m in monitor.monitors if not isinstance(m, GPUMonitor)]
            if len(others) != len(monitor.monitors):
                gpu = []
                if self.device is not None:
                    try:
                        gpu = [_own_gpu_monitor(self.device)]
                    except Exception as exc:  # NVML without this device: report the node's CPU side only
                        _log.warning("no GPU metrics for device %s: %s", self.device, exc)
                monitor.monitors = others + gpu
            monitor.start()
            self.monitor = monitor
        except Exception as exc:  # psutil missing, tracking store unreachable: train anyway
            _log.warning("system metrics for %s not started: %s", self.node_id, exc)
        return self

    def finish(self, start_wait_s: float | None = None) -> None:
        """Log the last sample, waiting at most ``start_wait_s`` (default :data:`START_WAIT_S`) for a monitor
        still starting."""
        wait = START_WAIT_S if start_wait_s is None else start_wait_s
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.join(wait)
            if starting.is_alive():  # still importing: the sample is lost, training is not held up
                _log.warning("system metrics for %s did not start within %.0f s", self.node_id, wait)
                return
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            monitor.finish()  # stops the sampling thread and flushes what it logged
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as exc:
            _log.warning("last system metrics sample for %s not logged: %s", self.node_id, exc)
