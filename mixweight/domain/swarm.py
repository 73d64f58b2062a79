"""A swarm: many ordinary training runs, each trained (or resumed, or reused) as a single-process run.

A member of the swarm is a plain dict, so it can be written to a file and read by another process:

    {"config": TrainConfig fields (its `out` is the run directory),
     "mixture": {domain: weight}   what the run samples, shown in its line,
     "targets": [domain, ...]      the domains whose mean validation loss its line shows,
     "log": path                   where the run's own output goes}

A run is finished when its `eval.json` exists. `train_swarm(members, world, work, progress)` trains the
unfinished ones: in this process one after the other, or under torchrun with P processes, process p runs
p, p + P, ... in a child process of its own (`python -m mixweight.domain.swarm PLAN INDICES LABEL NAME`; no
process group, its own device), so nothing is communicated while training; every process watches the
eval.json files while its child trains and until all exist (the main process prints the whole swarm's
finished count and an ETA as it changes). A run interrupted anywhere resumes from its newest checkpoint
(`proxy.train_or_reuse`) the next time; a run whose streaming dataset lost the race for a shared-memory
name is started again (`_train_with_retries`). One line per finished run; a progress bar with `progress`.

`write_plan(members, work)` writes the same runs for a scheduler (`configs/run-NNN.yaml`, `runs.txt`);
`swarm_launch.launch` trains them through SLURM (submitit) or Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from mixweight.core.distributed import barrier
from mixweight.core.jsonio import write_json_atomic
from mixweight.errors import MixweightError
from mixweight.train.config import TrainConfig

POLL_SECONDS = 2.0
PLAN_FILE = "swarm_members.json"  # the members, for the torchrun children
CHILD_ENV_DROP = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "eval.json").is_file()


def target_loss(run_dir: Path, targets: list[str]) -> float:
    """The mean validation loss over `targets` of a finished run."""
    losses = json.loads((Path(run_dir) / "eval.json").read_text())["domains"]
    return sum(losses[d]["loss"] for d in targets) / len(targets)


def _run_line(name: str, index: int, total: int, member: dict, seconds: float | None) -> str:
    target = target_loss(Path(member["config"]["out"]), member["targets"])
    mix = ", ".join(f"{d} {w:.2f}" for d, w in member["mixture"].items() if w > 0)
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    return f"mixweight {name}: run {index + 1}/{total} done{took}: target loss {target:.4f} ({mix})"


def train_member(member: dict) -> float:
    """Train (or resume, or reuse) one member, its output in its log; returns the seconds it took."""
    from mixweight.domain.proxy import train_or_reuse

    config = TrainConfig(**member["config"])
    log = Path(member["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("a") as handle, contextlib.redirect_stdout(handle):
        _train_with_retries(train_or_reuse, config)
    return time.perf_counter() - started


def train_share(
    members: list[dict], indices: list[int], total: int, progress: bool, label: str = "", name: str = "regmix"
) -> None:
    """Train (or resume, or reuse) the members `indices` in this process, one after the other; one line each."""
    pending = [i for i in indices if not finished(Path(members[i]["config"]["out"]))]
    bar = tqdm(
        total=len(indices),
        initial=len(indices) - len(pending),
        disable=not progress or None,
        desc=f"{name} swarm{label}",
        unit="run",
        dynamic_ncols=True,
    )
    for i in pending:
        seconds = train_member(members[i])
        bar.update(1)
        tqdm.write(_run_line(name, i, total, members[i], seconds) + label, file=sys.stdout)
        sys.stdout.flush()
    bar.close()


def _train_with_retries(train_or_reuse, config: TrainConfig, attempts: int = 5) -> None:
    """One swarm run. Swarm processes on one machine build their mosaicml-streaming datasets at the same
    moments, and streaming's choice of a free shared-memory prefix is not atomic across independent
    processes: two may pick the same one, and the second then fails with FileExistsError on creating it.
    Nothing is trained by then (the dataset is built before the first step), so the run is started again."""
    for attempt in range(attempts):
        try:
            train_or_reuse(config)
            return
        except FileExistsError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def child_env(local_rank: int) -> dict:
    """The environment of a swarm worker: no torchrun world (each run is a single-process run), one device."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP and not k.startswith("TORCHELASTIC_")}
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        env["CUDA_VISIBLE_DEVICES"] = devices[local_rank % len(devices)]
    return env


def train_swarm(members: list[dict], world, work: Path, progress: bool, name: str = "regmix") -> None:
    """Every member finished: trained here, or under torchrun each process's share in a child of its own."""
    total = len(members)
    if not world.distributed:
        train_share(members, list(range(total)), total, progress, name=name)
        return
    plan = work / PLAN_FILE
    if world.is_main:
        write_json_atomic(plan, members)
    barrier(world)
    share = list(range(world.rank, total, world.size))
    command = [sys.executable, "-m", "mixweight.domain.swarm", str(plan), ",".join(map(str, share))]
    command += [f" [process {world.rank}]", name]
    child = subprocess.Popen(command, env=child_env(world.local_rank))
    runs = [Path(m["config"]["out"]) for m in members]
    code = watch_swarm(child, runs, world.is_main, world.is_main and progress, name=name)
    if code != 0:
        raise MixweightError(
            f"weights {name}: process {world.rank}'s swarm runs {share} failed (exit code {code}); "
            "the error is printed above; rerun the same command to continue the swarm"
        )


def watch_swarm(
    child, runs: list[Path], report: bool, bar: bool, poll: float = POLL_SECONDS, name: str = "regmix"
) -> int:
    """While this process's child trains its share, and after it until every run of every process has its
    eval.json: with `report` (the main process), one line per change in the whole swarm's finished count
    with an ETA, and the whole-swarm bar with `bar`. Returns the child's exit code (at once on a failure)."""
    total = len(runs)
    done = sum(finished(r) for r in runs)
    first, started = done, time.perf_counter()
    shown = tqdm(total=total, initial=done, disable=not bar or None, desc=f"{name} swarm", unit="run")
    code = None
    try:
        while True:  # the other processes' results come through the filesystem, nothing is communicated
            if code is None:
                code = child.poll()
                if code is not None and code != 0:
                    return code
            now = sum(finished(r) for r in runs)
            if now != done:
                done = now
                shown.update(done - shown.n)
                if report:
                    rate = (time.perf_counter() - started) / max(done - first, 1)
                    eta = f", about {rate * (total - done):.0f}s left" if done < total else ""
                    tqdm.write(f"mixweight {name}: swarm progress: {done}/{total} runs finished{eta}", file=sys.stdout)
                    sys.stdout.flush()
            if done == total and code is not None:
                return code
            if done == total:  # every run finished: the child is exiting
                return child.wait()
            time.sleep(poll)
    except BaseException:  # interrupted: the child's run would go on training unwatched
        if child.poll() is None:
            child.terminate()
        raise
    finally:
        shown.close()


def write_plan(members: list[dict], work: Path) -> Path:
    """The swarm for a scheduler: `configs/run-NNN.yaml` (each run's complete `mixweight train` config) and
    `runs.txt`, one `mixweight train --config ... --resume` line per run (line i + 1 is run i: a job array's
    task i runs line i + 1). Returns runs.txt; files already holding the same text are left untouched."""
    from mixweight.core.config import to_yaml

    configs = work / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    lines = []
    for member in members:
        path = configs / f"{Path(member['config']['out']).name}.yaml"
        _write_text(path, to_yaml(TrainConfig(**member["config"])))
        lines.append(f"mixweight train --config {shlex.quote(str(path))} --resume\n")
    runs = work / "runs.txt"
    _write_text(runs, "".join(lines))
    return runs


def _write_text(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _worker(argv: list[str]) -> None:
    """`python -m mixweight.domain.swarm PLAN INDICES LABEL NAME`: one process's share of a swarm (torchrun)."""
    plan, indices = argv[0], [int(i) for i in argv[1].split(",") if i]
    label, name = (argv[2] if len(argv) > 2 else ""), (argv[3] if len(argv) > 3 else "regmix")
    members = json.loads(Path(plan).read_text())
    try:
        train_share(members, indices, len(members), progress=False, label=label, name=name)
    except MixweightError as exc:
        print(f"mixweight: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _worker(sys.argv[1:])
