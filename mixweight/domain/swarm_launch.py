"""A swarm's runs through a cluster scheduler: a SLURM job array (submitit) or Ray tasks, one run each.

    launch(kind, members, folder, options, retries, name, task=swarm.train_member)

trains every unfinished member (`swarm.py`'s plain dicts) and returns when each has finished, or raises one
MixweightError naming the runs that failed `retries` + 1 times and where their logs are. Each task calls
`task(member)`: `swarm.train_member`, which resumes a run from its newest checkpoint, so a run killed
mid-way (preempted, its node lost, out of time) continues where it stopped when it is started again.

- `slurm` (the `submitit` extra): one `AutoExecutor(folder=<work>/submitit)` job array over the unfinished runs
  (`map_array`); `options` are its parameters (`slurm_partition`, `timeout_min` (default here: 60),
  `gpus_per_node`, `cpus_per_task`, `slurm_array_parallelism`, `slurm_additional_parameters`, ...), and
  `cluster` picks the executor (`local`: submitit's LocalExecutor on this machine, each run a process of its
  own; default: SLURM when it is there). A task that failed (an exception, a killed process, a lost node) is
  submitted again, in a new array of the failed runs, up to `retries` times.
- `ray` (the `ray` extra): one task per run (`ray.remote(train_member)`), on the cluster at `address` (default:
  a local Ray instance over `local_cpus` of this machine's CPUs, default all, shut down at the end); the other
  options are the task's resources (`num_cpus`, default 1, `num_gpus`, `memory`, ...). Ray starts a failed
  task again itself (`max_retries` for a lost worker, `retry_exceptions` for an error), up to `retries` times.

The launcher prints one line per finished run and a line per resubmission; nothing is communicated but
through the run directories.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mixweight.domain.swarm import _run_line, finished, train_member
from mixweight.errors import MixweightError

POLL_SECONDS = 2.0
SUBMITIT_DEFAULTS = {"timeout_min": 60}  # submitit's own default (5 min) would cut most real runs off


def launch(kind: str, members: list[dict], folder: Path, options: dict, retries: int, name: str, task=None) -> None:
    """Every member finished through `kind` (slurm or ray); see the module docstring."""
    task = task or train_member
    pending = [i for i, m in enumerate(members) if not finished(Path(m["config"]["out"]))]
    if not pending:
        return
    run = {"slurm": _slurm, "ray": _ray}[kind]
    failed = run(members, pending, folder, dict(options or {}), retries, name, task)
    if failed:
        logs = ", ".join(f"run {i} ({members[i]['log']}): {why}" for i, why in sorted(failed.items())[:4])
        raise MixweightError(
            f"weights {name}: {len(failed)} swarm run(s) failed {retries + 1} times through --launcher {kind}: "
            f"{logs}{' ...' if len(failed) > 4 else ''}; rerun the command to start them again (each resumes)"
        )


def _say(line: str) -> None:
    print(line, file=sys.stdout, flush=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]


# --- slurm (submitit) ---------------------------------------------------------------------------------------
def _slurm(members, pending, folder, options, retries, name, task) -> dict[int, str]:
    import submitit

    cluster = options.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**{"name": f"mixweight-{name}", **SUBMITIT_DEFAULTS, **options})
    failed: dict[int, str] = {}
    for attempt in range(retries + 1):
        jobs = dict(zip(pending, executor.map_array(task, [members[i] for i in pending])))
        ids = sorted({job.job_id.split("_")[0] for job in jobs.values()})
        _say(f"mixweight {name}: {len(jobs)} swarm runs submitted as job array {', '.join(ids)}, try {attempt + 1}")
        failed = {}
        while jobs:
            for i, job in list(jobs.items()):
                if not job.done():
                    continue
                del jobs[i]
                try:
                    seconds = job.result()
                except Exception as exc:  # the job's exception, or a job killed before it wrote a result
                    failed[i] = _first_line(exc)
                    continue
                _say(_run_line(name, i, len(members), members[i], seconds))
            if jobs:
                time.sleep(POLL_SECONDS)
        pending = sorted(failed)
        if not pending:
            return {}
        if attempt < retries:
            _say(f"mixweight {name}: {len(pending)} swarm run(s) failed ({failed[pending[0]]}); submitting them again")
    return failed


# --- ray ----------------------------------------------------------------------------------------------------
def _ray(members, pending, folder, options, retries, name, task) -> dict[int, str]:
    import ray

    address, local_cpus = options.pop("address", None), options.pop("local_cpus", None)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, num_cpus=local_cpus, include_dashboard=False, log_to_driver=False)
    try:
        remote = ray.remote(task).options(
            max_retries=retries, retry_exceptions=True, **{"num_cpus": 1, **options}
        )  # fmt: skip
        refs = {remote.remote(members[i]): i for i in pending}
        _say(f"mixweight {name}: {len(refs)} swarm runs submitted as Ray tasks")
        failed: dict[int, str] = {}
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                i = refs.pop(ref)
                try:
                    seconds = ray.get(ref)
                except Exception as exc:  # after Ray's own retries
                    failed[i] = _first_line(exc)
                    continue
                _say(_run_line(name, i, len(members), members[i], seconds))
        return failed
    finally:
        if started_here:
            ray.shutdown()
