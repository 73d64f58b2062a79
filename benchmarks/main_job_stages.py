"""The main job's time per stage: wall, CPU (this process and its children) and the load around each stage.

Runs `mixweight pipeline CONFIG --out DIR` in this process and times every stage it runs (a stage the out
directory already holds is cached and takes no time: use a fresh DIR to time them all) and the report.
CPU seconds are the work done whatever the machine's load; wall seconds are what a user waits, and mean
something only on a quiet machine (record the load beside them, as this prints it).

    python benchmarks/main_job_stages.py configs/quickstart.yaml --out runs/quickstart [--json FILE]

On a machine shared with other jobs, run it under `nice -n 10`. `OMP_WAIT_POLICY=PASSIVE` asks OpenMP's idle
threads to sleep instead of spinning (the OpenMP specification's meaning); what it changes for this job is not
measured (benchmarks/arm_profile.py's `passive` variant measures it on one arm).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--out", required=True)
    parser.add_argument("--json", help="write the stage times here")
    args = parser.parse_args(argv)

    from mixweight.doctor import collect
    from mixweight.pipeline import load_pipeline_config, run_pipeline
    from mixweight.pipeline.stages import Stage

    rows = []
    run_stage = Stage.run

    def timed(stage: Stage) -> None:
        load, wall, cpu = os.getloadavg()[0], time.perf_counter(), cpu_seconds()
        try:
            run_stage(stage)
        finally:
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            rows.append({"stage": stage.name, "wall_s": wall, "cpu_s": cpu, "load": [load, os.getloadavg()[0]]})

    Stage.run = timed
    began_load, began, began_cpu = os.getloadavg()[0], time.perf_counter(), cpu_seconds()
    run_pipeline(load_pipeline_config(args.config), args.out)
    total = {"wall_s": time.perf_counter() - began, "cpu_s": cpu_seconds() - began_cpu}
    total["load"] = [began_load, os.getloadavg()[0]]

    cpu = collect()["cpu"]
    print(f"\n{args.config}: {cpu['model']}, {cpu['cores']} cores, torch threads {cpu['torch_threads']}")
    print("| stage | wall | CPU s | load (1-min) before-after |")
    print("|---|---|---|---|")
    for row in rows:
        minutes, seconds = divmod(round(row["wall_s"]), 60)
        load = f"{row['load'][0]:.1f}-{row['load'][1]:.1f}"
        print(f"| {row['stage']} | {minutes}m{seconds:02d}s | {row['cpu_s']:.0f} | {load} |")
    minutes, seconds = divmod(round(total["wall_s"]), 60)
    load = f"{total['load'][0]:.1f}-{total['load'][1]:.1f}"
    print(f"| **whole job** (stages, report) | **{minutes}m{seconds:02d}s** | {total['cpu_s']:.0f} | {load} |")
    if args.json:
        record = {"config": args.config, "cpu": cpu, "stages": rows, "total": total}
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
