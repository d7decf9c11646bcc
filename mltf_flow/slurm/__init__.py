"""SLURM itself, for every part of mltf_flow that talks to it: the Dask cluster profiles
(:mod:`mltf_flow.clusters.slurm`) and the MLflow backend (:mod:`mltf_flow.backend`).

* :mod:`~mltf_flow.slurm.sbatch`     ``sbatch`` (submit) and ``scancel``;
* :mod:`~mltf_flow.slurm.preflight`  ``sbatch --test-only``: would SLURM accept this script? (the one
  pre-flight check both submitters run before anything is recorded or submitted);
* :mod:`~mltf_flow.slurm.states`     every SLURM job state and what it means for an MLflow run;
* :mod:`~mltf_flow.slurm.query`      batched ``squeue`` / ``scontrol`` / ``sacct`` lookups.

Nothing here knows about profiles, backend configs or MLflow runs beyond the run status names: callers
pass the script, the environment and the words of their own error messages.
"""
