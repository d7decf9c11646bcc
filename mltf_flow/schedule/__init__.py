"""Scheduled batch pipelines: ``mltf-flow schedule`` (docs/scheduling.md).

* :mod:`~mltf_flow.schedule.when`        when a schedule fires (a period or a cron expression);
* :mod:`~mltf_flow.schedule.spec`        the schedule as a value: what runs, when, where, how fires behave;
* :mod:`~mltf_flow.schedule.store`       where definitions and fire logs live (the work directory);
* :mod:`~mltf_flow.schedule.slurm_chain` ``via: slurm``: a self-resubmitting ``sbatch --begin`` job;
* :mod:`~mltf_flow.schedule.crontab`     ``via: cron`` and ``via: scrontab``: a block in the user's table;
* :mod:`~mltf_flow.schedule.record`      the fires in MLflow: one parent run per fire;
* :mod:`~mltf_flow.schedule.fire`        one fire: chain, record, overlap, run, outcome, report;
* :mod:`~mltf_flow.schedule.commands`    the ``mltf-flow schedule`` subcommands.
"""
