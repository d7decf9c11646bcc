"""``mlflow run --backend mltf``: MLflow project entry points as plain SLURM batch jobs (no Dask, no
long-lived driver).

The MLflow CLI exits right after submission, so everything a job needs travels with it and the job
reports its own outcome:

* :mod:`~mltf_flow.backend.mlflow_backend` the ``mltf`` backend MLflow loads (entry point
  ``mlflow.project_backend``), kept light: the rest is imported when a run is submitted;
* :mod:`~mltf_flow.backend.config`     the backend config (mlflow-slurm's ``slurm_config.json`` keys or a
  profile of ours), checked before anything is submitted;
* :mod:`~mltf_flow.backend.spec`       what one job runs (``spec.json`` in the job's directory);
* :mod:`~mltf_flow.backend.script`     the sbatch script (render without submitting: ``mltf-flow render``);
* :mod:`~mltf_flow.backend.submit`     project + parameters + config -> a submitted job and its MLflow run;
* :mod:`~mltf_flow.backend.wrapper`    runs inside the job around the command and records how it ended;
* :mod:`~mltf_flow.backend.task`       one ``srun`` task of a multi-task job, with the torchrun variables;
* :mod:`~mltf_flow.backend.record`     the wrapper's status record (read back when SLURM forgot the job);
* :mod:`~mltf_flow.backend.submitted`  :class:`~mltf_flow.backend.submitted.SlurmSubmittedRun` (wait, status, cancel);
* :mod:`~mltf_flow.backend.liveness`   whether a run's job is still alive, for the tracker's reaping.

What is SLURM's own and shared with the Dask cluster profiles lives in :mod:`mltf_flow.slurm`
(``sbatch`` and its ``--test-only`` pre-flight, ``scancel``, job states, ``squeue``/``scontrol``/``sacct``
queries); the project's ``python_env.yaml`` environment, built on the node, in :mod:`mltf_flow.pyenv`.
"""
