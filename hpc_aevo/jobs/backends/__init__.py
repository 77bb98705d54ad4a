"""The scheduler backends: submitit's local executor and SLURM job arrays, chosen by `scheduler.backend`."""

from __future__ import annotations

from hpc_aevo.campaign.config import STAGES, Campaign
from hpc_aevo.campaign.reader import ConfigError
from hpc_aevo.jobs.scheduler import Scheduler


def make_scheduler(campaign: Campaign) -> Scheduler:
    """The campaign's backend. A bad cluster profile raises a ConfigError that names the profile file, a
    campaign the backend cannot serve one that names the campaign file."""
    config = campaign.scheduler
    if config.backend == "local":
        from hpc_aevo.jobs.backends.local import LocalScheduler

        return LocalScheduler(max_parallel=config.max_parallel, stages=config.stages)
    if config.backend == "slurm":
        from hpc_aevo.campaign.profile import load_profile, task_resources
        from hpc_aevo.jobs.backends.slurm import SlurmScheduler

        profile = load_profile(campaign.paths.profile)
        for name in STAGES:  # the campaign's GPUs apply where the profile's shape leaves them unset
            gpus = task_resources(config.stages.of(name), getattr(profile.stages, name)).gpus_per_node
            if gpus > profile.gpus_per_node_available:
                raise ConfigError(f"scheduler.stages.{name}.gpus", f"at most the profile's gpus_per_node_available "
                                  f"({profile.gpus_per_node_available}, {campaign.paths.profile})", gpus,
                                  str(campaign.source))
        return SlurmScheduler(max_parallel=config.max_parallel, stages=config.stages,
                              profile=profile, campaign=campaign.name,
                              state_root=campaign.paths.state_root, poll_interval_s=config.poll_interval_s)
    raise ConfigError("scheduler.backend", "'local' or 'slurm'", config.backend, str(campaign.source))
