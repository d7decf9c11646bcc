"""Plain SLURM batch jobs: what ``mlflow run --backend mltf`` submits (no Dask, no long-lived driver).

The MLflow CLI exits right after submission, so everything a job needs travels with it and the job
reports its own outcome:

* :mod:`~mltf_flow.jobs.config`     the backend config (mlflow-slurm's ``slurm_config.json`` keys or a
  profile of ours), checked before anything is submitted;
* :mod:`~mltf_flow.jobs.spec`       what one job runs (``spec.json`` in the job's directory);
* :mod:`~mltf_flow.jobs.script`     the sbatch script (render without submitting: ``mltf-flow render``);
* :mod:`~mltf_flow.jobs.sbatch`     ``sbatch --test-only``, ``sbatch``, ``scancel``;
* :mod:`~mltf_flow.jobs.submit`     project + parameters + config -> a submitted job and its MLflow run;
* :mod:`~mltf_flow.jobs.wrapper`    runs inside the job around the command and records how it ended;
* :mod:`~mltf_flow.jobs.task`       one ``srun`` task of a multi-task job, with the torchrun variables;
* :mod:`~mltf_flow.pyenv`      the project's ``python_env.yaml`` environment, built on the node;
* :mod:`~mltf_flow.jobs.record`     the wrapper's status record (read back when SLURM forgot the job);
* :mod:`~mltf_flow.jobs.states`     every SLURM job state and what it means for the MLflow run;
* :mod:`~mltf_flow.jobs.query`      batched ``squeue`` / ``scontrol`` / ``sacct`` polling;
* :mod:`~mltf_flow.jobs.submitted`  :class:`~mltf_flow.jobs.submitted.SlurmSubmittedRun` (wait, status, cancel).
"""
