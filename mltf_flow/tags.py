"""Every run tag mltf_flow reads or writes, in one table with its meaning.

A constant's name is the tag's name without ``mltf.``, upper case, dots as ``_``, after ``TAG_``
(``mltf.slurm.job_id`` -> :data:`TAG_SLURM_JOB_ID`). Tags are stored in users' tracking stores: a name
is never changed, even where two names say nearly the same thing (both are read, see the notes).

====================================  ===============================================================================
tag                                   meaning (who sets it)
====================================  ===============================================================================
*finding a run again* (every step run: pipeline steps, staging, ``mlflow run --backend mltf``)
mltf.cache_key                        the step's cache key (DESIGN.md, principle 2); how a complete run is found again
mltf.key_version                      the cache key's schema version
mltf.key_before_run                   the key before the run, when the command wrote files the key had counted as
                                      code (the run is then keyed without them)
mltf.pipeline                         the pipeline's name (``datasets`` for a staging run outside a pipeline)
mltf.step                             the step's name (``stage`` for staging)
mltf.role                             ``pipeline`` (the parent run of an invocation), ``step``, ``stage``,
                                      ``study`` or ``trial``
mltf.task_id                          the Luigi task id (``mlflow-run:<project>:<entry point>`` for the backend)
mltf.invocation_id                    one pipeline invocation: the parent run and every step run it started
*lineage* (step runs)
mltf.code_hash                        hash of the project's code files (:mod:`mltf_flow.code_set`)
mltf.code_files                       how many files the code hash covers
mltf.code_not_hashed                  large files the code rules left out of the hash (comma list), reported
mltf.git_dirty                        ``true`` when the project has uncommitted changes (next to MLflow's git tags)
mltf.env_hash                         hash of the environment's declaration (and its freeze)
mltf.env_manager                      ``local``, ``virtualenv``, ``uv`` or ``conda``
mltf.env_prefix                       where the step's environment was built
mltf.upstream_run_ids                 JSON: requirement name -> run id of the upstream step
mltf.inputs                           JSON: the datasets read (URIs and manifest digests)
mltf.profile                          the cluster profile (or backend config profile) the step ran with
mltf.launcher                         how the command ran: ``driver``, ``worker``, ``ddp`` or ``mlflow-backend``
mltf.dask_dashboard                   the Dask dashboard of the step's cluster
mltf.dask_scheduler                   the Dask scheduler address the command got
mltf.replaces_run_ids                 stale RUNNING runs of the same key this run replaced (marked KILLED)
mltf.changed_params                   JSON: the step's parameters that differ from its entry point's defaults
                                      (what its run name shows; the parent run's name gathers them)
*owner and liveness* (step runs and parent runs)
mltf.host                             host of the process that owns the run
mltf.pid                              its pid ...
mltf.pid_start                        ... and that pid's start time (a reused pid is told apart)
mltf.command_pid                      pid of the step's command (local launcher)
*outcome*
mltf.complete                         ``true`` only after exit code 0 and verified outputs; with FINISHED = complete
mltf.exit_code                        the command's exit code
mltf.error                            why the run FAILED or was KILLED (at most 5,000 characters)
mltf.reaped                           ``true`` on a stale RUNNING run a later attempt marked KILLED
*resumed attempts and checkpoints* (:mod:`mltf_flow.checkpoint`)
mltf.attempt                          attempt number of a run resumed from its checkpoint (the first is 1, untagged)
mltf.resumed_from_epoch               the checkpoint epoch the attempt resumed from
mltf.previous_parent_run_ids          parent runs of earlier attempts (comma list)
mltf.checkpoint.latest                artifact path of the newest checkpoint
mltf.checkpoint.epoch                 its epoch
mltf.checkpoint.sha256                its sha256 (checked before it is loaded); of its ``MANIFEST`` when sharded
mltf.checkpoint.sharded               artifact path of the newest sharded (DCP) checkpoint
                                      (:mod:`mltf_flow.sharded_checkpoint`): the latest is sharded when this equals
                                      ``mltf.checkpoint.latest``
*continuation past the time limit* (:mod:`mltf_flow.continuation`)
mltf.segments                         how many jobs (segments) the run took: 1 until a time limit ended one
mltf.segment.<n>                      segment n: its SLURM job(s) and how it ended (``continued: time limit``, ...)
*the parent run of a pipeline invocation*
mltf.steps_run                        steps that ran and finished in this invocation (comma list)
mltf.failed_steps                     steps that failed in it (comma list); the parent run is then FAILED
*the parent run of a schedule's fire* (:mod:`mltf_flow.schedule.fire`; also ``mltf.steps_run``/``failed_steps``)
mltf.schedule                         the schedule's name (``mltf-flow schedule``)
mltf.schedule.id                      the schedule's id (a schedule removed and added again has a new one)
mltf.schedule.slot                    the time the fire stands for (local time, to the second)
mltf.schedule.via                     how it was started: ``slurm``, ``scrontab``, ``cron`` or ``manual``
mltf.schedule.job_id                  the fire's own SLURM job
mltf.schedule.next                    what holds the next fire (a SLURM fire submits it before running)
mltf.schedule.overlap                 what the fire did about an earlier fire still running (waited / skipped)
mltf.schedule.outcome                 ``ran: <steps>``, ``nothing to do``, ``skipped: ...``, ``failed: ...``,
                                      ``lost: ...`` (set last: a fire without it is running or was killed)
*staging* (:mod:`mltf_flow.staging.step`)
mltf.dataset.uri                      the dataset URI, canonical form
mltf.dataset.files                    how many files the manifest lists
mltf.manifest_digest                  the manifest's digest (what downstream keys include)
mltf.rucio.mode                       ``rule`` (a replication rule to the facility's RSE) or ``download``
mltf.rucio.rse_expression             the RSE expression the rule asked for
mltf.rucio.rule_id                    the replication rule (set as soon as it exists)
*SLURM* (Dask worker jobs of pipeline steps; jobs of ``mlflow run --backend mltf``)
mltf.slurm_job_ids                    comma list of SLURM jobs of the run: a pipeline step's Dask worker jobs (a
                                      study's trial: the jobs of its own workers), or the backend's submitted job
                                      (the last entry is the current one)
mltf.slurm.job_id                     the backend job running the run now, set by its wrapper when it starts; the
                                      same job as the last entry of ``mltf.slurm_job_ids`` (which is set at
                                      submission, before the job runs): both are kept, both are read
mltf.slurm.job_dir                    the job's directory (spec, script, record); marks a backend run
mltf.slurm.log                        the job's ``slurm-<id>.out``
mltf.slurm.request                    the ``#SBATCH`` directives asked for
mltf.slurm.tasks                      tasks (ranks) of the job
mltf.slurm.batch_host                 the node the job's batch script runs on
mltf.slurm.nodes                      the job's node list
mltf.slurm.restarts                   SLURM's restart count (requeues)
mltf.slurm.state                      SLURM's state of the job (``PENDING``, ``RUNNING``, ``TIMEOUT``, ...)
mltf.slurm.reason                     SLURM's reason for it (``Resources``, ...); absent while SLURM gives none
mltf.slurm.pre_timeout_signal_at      when SLURM's warning signal before the time limit arrived
mltf.slurm.cancelled_by               who cancelled the job through ``SubmittedRun.cancel()``
*DDP* (:mod:`mltf_flow.ddp.launcher`)
mltf.ddp.world_size                   number of ranks
mltf.ddp.master                       rank 0's address and port
mltf.ddp.ranks                        JSON: where each rank ran
mltf.ddp.fabric                       rank 0's fabric note (interface, RoCE or not)
mltf.ddp.fabric_env                   JSON: rank 0's NCCL/fabric variables
*hyperparameter studies* (:mod:`mltf_flow.tune`; the study run is a step run with ``mltf.role`` ``study``, each trial
a step run with ``mltf.role`` ``trial`` under it)
mltf.study.name                       the Optuna study (study run and trial runs)
mltf.study.storage                    the Optuna storage holding it (credentials stripped)
mltf.study.metric                     the metric optimised
mltf.study.direction                  ``maximize`` or ``minimize``
mltf.study.n_trials                   trials the study runs
mltf.study.trials                     how its trials ended: ``20: 14 complete, 5 pruned, 1 failed``
mltf.study.best_trial                 the best trial's number
mltf.study.best_value                 its value of the metric
mltf.study.best_params                JSON: its parameters (``--from-study`` gives them to a step)
mltf.study.best_run_id                its MLflow run
mltf.study.dashboard                  the study in optuna-dashboard (``mltf-flow optuna-dashboard`` serves it there)
mltf.trial.number                     the Optuna trial number of a trial run
mltf.trial.state                      ``complete``, ``pruned`` (stopped by the pruner; the run is KILLED) or ``failed``
mltf.trial.pruned_at                  the step (epoch) a pruned trial was stopped after
*the gateway* (:mod:`mltf_flow.gateway`; stamped by the gateway and its MLflow proxy, never by the client)
mltf.user                             the user who submitted through the gateway (the token's user name; MLflow's
                                      ``mlflow.user`` says the same, the runs' jobs run as the facility's account)
mltf.gateway.submission               the gateway submission whose job created the run
mltf.gateway.url                      the gateway that accepted it
*data loading* (set by the example project's ``train.py``, user code that writes literals)
mltf.data.backend                     the read backend that ran (``kvikio``, ``torch_gds``, ``posix``)
mltf.data.compat                      ``true`` when cuFile/KvikIO fell back to POSIX reads (absent: no cuFile read)
mltf.data.source                      the file the data was read from
mltf.data.cufile_json                 ``CUFILE_ENV_PATH_JSON`` of the reading process
====================================  ===============================================================================

MLflow's own tags that mltf_flow sets are named at the bottom (``MLFLOW_*``), so the light modules need
not import mlflow for them. Those that change what the MLflow UI shows:

====================================  ===============================================================================
mlflow.runName                        run name: ``features (max_constituents=32)``, ``jet_tagging: train (epochs=12)``
                                      (:mod:`mltf_flow.run_description`)
mlflow.note.content                   the run's Markdown description: its lineage as links (step runs, staging runs,
                                      parent runs; rewritten when the run ends)
mlflow.experimentKind                 experiment tag ``custom_model_development`` on the experiments mltf_flow
                                      creates or uses (one the user set is kept): the MLflow UI then opens the
                                      experiment on its training runs, not on its GenAI overview
====================================  ===============================================================================
"""

from __future__ import annotations

# finding a run again
TAG_CACHE_KEY = "mltf.cache_key"
TAG_KEY_VERSION = "mltf.key_version"
TAG_KEY_BEFORE_RUN = "mltf.key_before_run"
TAG_PIPELINE = "mltf.pipeline"
TAG_STEP = "mltf.step"
TAG_ROLE = "mltf.role"
TAG_TASK_ID = "mltf.task_id"
TAG_INVOCATION_ID = "mltf.invocation_id"
# lineage
TAG_CODE_HASH = "mltf.code_hash"
TAG_CODE_FILES = "mltf.code_files"
TAG_CODE_NOT_HASHED = "mltf.code_not_hashed"
TAG_GIT_DIRTY = "mltf.git_dirty"
TAG_ENV_HASH = "mltf.env_hash"
TAG_ENV_MANAGER = "mltf.env_manager"
TAG_ENV_PREFIX = "mltf.env_prefix"
TAG_UPSTREAM_RUN_IDS = "mltf.upstream_run_ids"
TAG_INPUTS = "mltf.inputs"
TAG_PROFILE = "mltf.profile"
TAG_LAUNCHER = "mltf.launcher"
TAG_DASK_DASHBOARD = "mltf.dask_dashboard"
TAG_DASK_SCHEDULER = "mltf.dask_scheduler"
TAG_REPLACES_RUN_IDS = "mltf.replaces_run_ids"
TAG_CHANGED_PARAMS = "mltf.changed_params"
# owner and liveness
TAG_HOST = "mltf.host"
TAG_PID = "mltf.pid"
TAG_PID_START = "mltf.pid_start"
TAG_BOOT_ID = "mltf.boot_id"
TAG_LEASE_EXPIRES = "mltf.lease_expires"
TAG_COMMAND_PID = "mltf.command_pid"
# outcome
TAG_COMPLETE = "mltf.complete"
TAG_EXIT_CODE = "mltf.exit_code"
TAG_ERROR = "mltf.error"
TAG_REAPED = "mltf.reaped"
# resumed attempts and checkpoints
TAG_ATTEMPT = "mltf.attempt"
TAG_RESUMED_FROM_EPOCH = "mltf.resumed_from_epoch"
TAG_PREVIOUS_PARENT_RUN_IDS = "mltf.previous_parent_run_ids"
TAG_CHECKPOINT_LATEST = "mltf.checkpoint.latest"
TAG_CHECKPOINT_EPOCH = "mltf.checkpoint.epoch"
TAG_CHECKPOINT_SHA256 = "mltf.checkpoint.sha256"
TAG_CHECKPOINT_SHARDED = "mltf.checkpoint.sharded"
# continuation past the time limit
TAG_SEGMENTS = "mltf.segments"
TAG_SEGMENT_PREFIX = "mltf.segment."
# the parent run of a pipeline invocation
TAG_STEPS_RUN = "mltf.steps_run"
TAG_FAILED_STEPS = "mltf.failed_steps"
# the parent run of a schedule's fire
TAG_SCHEDULE = "mltf.schedule"
TAG_SCHEDULE_ID = "mltf.schedule.id"
TAG_SCHEDULE_SLOT = "mltf.schedule.slot"
TAG_SCHEDULE_VIA = "mltf.schedule.via"
TAG_SCHEDULE_JOB_ID = "mltf.schedule.job_id"
TAG_SCHEDULE_NEXT = "mltf.schedule.next"
TAG_SCHEDULE_OVERLAP = "mltf.schedule.overlap"
TAG_SCHEDULE_OUTCOME = "mltf.schedule.outcome"
# the gateway
TAG_USER = "mltf.user"
TAG_GATEWAY_SUBMISSION = "mltf.gateway.submission"
TAG_GATEWAY_URL = "mltf.gateway.url"
# staging
TAG_DATASET_URI = "mltf.dataset.uri"
TAG_DATASET_FILES = "mltf.dataset.files"
TAG_MANIFEST_DIGEST = "mltf.manifest_digest"
TAG_RUCIO_MODE = "mltf.rucio.mode"
TAG_RUCIO_RSE_EXPRESSION = "mltf.rucio.rse_expression"
TAG_RUCIO_RULE_ID = "mltf.rucio.rule_id"
# SLURM
TAG_SLURM_JOB_IDS = "mltf.slurm_job_ids"
TAG_SLURM_JOB_ID = "mltf.slurm.job_id"
TAG_SLURM_JOB_DIR = "mltf.slurm.job_dir"
TAG_SLURM_LOG = "mltf.slurm.log"
TAG_SLURM_REQUEST = "mltf.slurm.request"
TAG_SLURM_TASKS = "mltf.slurm.tasks"
TAG_SLURM_BATCH_HOST = "mltf.slurm.batch_host"
TAG_SLURM_NODES = "mltf.slurm.nodes"
TAG_SLURM_RESTARTS = "mltf.slurm.restarts"
TAG_SLURM_STATE = "mltf.slurm.state"
TAG_SLURM_REASON = "mltf.slurm.reason"
TAG_SLURM_PRE_TIMEOUT_SIGNAL_AT = "mltf.slurm.pre_timeout_signal_at"
TAG_SLURM_CANCELLED_BY = "mltf.slurm.cancelled_by"
# DDP
TAG_DDP_WORLD_SIZE = "mltf.ddp.world_size"
TAG_DDP_MASTER = "mltf.ddp.master"
TAG_DDP_RANKS = "mltf.ddp.ranks"
TAG_DDP_FABRIC = "mltf.ddp.fabric"
TAG_DDP_FABRIC_ENV = "mltf.ddp.fabric_env"
# hyperparameter studies
TAG_STUDY_NAME = "mltf.study.name"
TAG_STUDY_STORAGE = "mltf.study.storage"
TAG_STUDY_METRIC = "mltf.study.metric"
TAG_STUDY_DIRECTION = "mltf.study.direction"
TAG_STUDY_N_TRIALS = "mltf.study.n_trials"
TAG_STUDY_TRIALS = "mltf.study.trials"
TAG_STUDY_BEST_TRIAL = "mltf.study.best_trial"
TAG_STUDY_BEST_VALUE = "mltf.study.best_value"
TAG_STUDY_BEST_PARAMS = "mltf.study.best_params"
TAG_STUDY_BEST_RUN_ID = "mltf.study.best_run_id"
TAG_STUDY_DASHBOARD = "mltf.study.dashboard"
TAG_TRIAL_NUMBER = "mltf.trial.number"
TAG_TRIAL_STATE = "mltf.trial.state"
TAG_TRIAL_PRUNED_AT = "mltf.trial.pruned_at"
# data loading (the example project)
TAG_DATA_BACKEND = "mltf.data.backend"
TAG_DATA_COMPAT = "mltf.data.compat"
TAG_DATA_SOURCE = "mltf.data.source"
TAG_DATA_CUFILE_JSON = "mltf.data.cufile_json"

# MLflow's own tags (names as in mlflow.utils.mlflow_tags), set on the runs mltf_flow creates.
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_USER = "mlflow.user"
MLFLOW_SOURCE_TYPE = "mlflow.source.type"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_GIT_REPO_URL = "mlflow.source.git.repoURL"
MLFLOW_GIT_BRANCH = "mlflow.source.git.branch"
MLFLOW_PROJECT_ENTRY_POINT = "mlflow.project.entryPoint"
MLFLOW_PROJECT_ENV = "mlflow.project.env"
MLFLOW_PROJECT_BACKEND = "mlflow.project.backend"
MLFLOW_NOTE = "mlflow.note.content"
#: An experiment tag (not a run tag); its value for training experiments.
MLFLOW_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
