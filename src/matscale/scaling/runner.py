"""Run a sweep: locally one run after another, or as a SLURM array (one run per task).

Resumable both ways. A run whose config hash is in the results table is skipped; a run that
crashed resumes from its newest checkpoint (``train`` does that by itself); a run directory
that holds another config's run is an error, never silently continued.
"""

from __future__ import annotations

import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from matscale.config import ConfigError, load
from matscale.errors import RunInterrupted
from matscale.parallel.distributed import launch_position
from matscale.scaling.results import RESULTS, append_row, finished_hashes, run_row
from matscale.scaling.sweep import PlannedRun, SweepConfig, config_hash, plan, to_yaml
from matscale.signals import EXIT_INTERRUPTED
from matscale.train.loop import train


def run_sweep(
    sweep: SweepConfig,
    *,
    only: list[int] | None = None,
    progress: bool = False,
    keep_going: bool = True,
) -> dict[str, list[str]]:
    """Train the runs of ``sweep`` not yet in its results table (``only``: those indices),
    appending a row after each. Returns the names of runs ``done``, ``skipped`` and ``failed``
    (with ``keep_going`` a failed run is reported and the sweep goes on)."""
    pos = launch_position()  # torchrun or srun: each process runs the sweep, rank 0 writes
    main, world = pos.main, pos.world
    if world != sweep.processes:  # its runs would train another global batch than planned
        raise ConfigError(
            f"sweep {sweep.name} plans its runs for processes={sweep.processes} (an epoch's "
            f"steps, the global batch), and this command runs on {world}: set "
            f"processes={world} in the sweep, or launch {sweep.processes}"
        )
    runs = plan(sweep)
    if only is not None:
        unknown = sorted(set(only) - {r.index for r in runs})
        if unknown:
            raise ConfigError(
                f"sweep {sweep.name}: no run with index {unknown} (0–{len(runs) - 1})"
            )
        runs = [r for r in runs if r.index in only]
    path = sweep.sweep_dir / RESULTS
    if main:
        sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep.sweep_dir / "sweep.yaml").write_text(to_yaml(sweep))
    outcome: dict[str, list[str]] = {"done": [], "skipped": [], "failed": []}
    for r in runs:
        finished = finished_hashes(path)
        name = r.config.name
        if r.config_hash in finished:
            outcome["skipped"].append(name)
            continue
        _check_run_dir(r)
        if main:
            print(f"[sweep {sweep.name}] run {r.index}: {name} ({r.config.train.steps} steps)",
                  flush=True)  # fmt: skip
        try:
            final = train(r.config, progress=progress)
        except RunInterrupted:  # a signal stops the sweep; the run resumes on the next call
            raise
        except Exception:
            if not keep_going:
                raise
            traceback.print_exc()
            print(f"[sweep {sweep.name}] run {name} failed; going on", file=sys.stderr, flush=True)
            outcome["failed"].append(name)
            continue
        if main:
            append_row(path, run_row(r, final, sweep.name, processes=world))
        outcome["done"].append(name)
    return outcome


def _check_run_dir(r: PlannedRun) -> None:
    """A run directory left by another config (the sweep was edited) must not be resumed."""
    saved = r.config.run_dir / "config.yaml"
    if saved.exists() and config_hash(load(saved)) != r.config_hash:
        raise ConfigError(
            f"{r.config.run_dir} holds a run of a different config than the sweep plans now; "
            "delete that directory or give the sweep another name"
        )


def slurm_script(sweep: SweepConfig, config: Path, overrides: list[str] = ()) -> str:  # type: ignore[assignment]
    """A SLURM array script with one task per run of ``sweep`` (read from ``config`` with
    ``overrides``). Each array task runs ``matscale sweep run --index $SLURM_ARRAY_TASK_ID``
    as one ``srun`` process per GPU (matscale reads its rank from SLURM's variables).
    ``grace_s`` seconds before the time limit SLURM sends SIGUSR1: every process finishes its
    step, writes a checkpoint and exits with :data:`~matscale.signals.EXIT_INTERRUPTED`, on
    which the script requeues its task; the requeued task resumes from that checkpoint.
    Resubmitting the script finishes what is missing."""
    runs = plan(sweep)
    s = sweep.slurm
    processes = s.nodes * s.gpus_per_node
    if processes != sweep.processes:
        raise ConfigError(
            f"sweep {sweep.name}: slurm gives {s.nodes} node(s) × {s.gpus_per_node} = "
            f"{processes} processes but processes = {sweep.processes} (it sets the steps of "
            "an epoch budget): make them agree"
        )
    array = f"0-{len(runs) - 1}" + (f"%{s.concurrent}" if s.concurrent else "")
    logs = sweep.sweep_dir / "slurm"
    lines: list[Any] = [
        "#!/bin/bash",
        f"#SBATCH --job-name=matscale-{sweep.name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --nodes={s.nodes}",
        f"#SBATCH --ntasks-per-node={s.gpus_per_node}",
        f"#SBATCH --gpus-per-node={s.gpus_per_node}",
        f"#SBATCH --time={s.time}",
        f"#SBATCH --signal=USR1@{s.grace_s}",
        "#SBATCH --requeue",
        f"#SBATCH --output={logs}/%A_%a.out",
    ]
    lines += [f"#SBATCH --partition={s.partition}"] * bool(s.partition)
    lines += [f"#SBATCH --account={s.account}"] * bool(s.account)
    args = " ".join(shlex.quote(a) for a in [str(config), *overrides])
    lines += [
        "# written by `matscale sweep slurm`; runs already in the results table are skipped",
        "set -uo pipefail",
        f"mkdir -p {logs}",
        s.setup,
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR MASTER_PORT=$((29500 + SLURM_ARRAY_TASK_ID % 1000))",
        f'srun python -m matscale sweep run {args} --index "$SLURM_ARRAY_TASK_ID"',
        "code=$?",
        f"if [ $code -eq {EXIT_INTERRUPTED} ]; then  # stopped before the time limit, checkpointed",
        '    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        "fi",
        "exit $code",
    ]
    return "\n".join(lines) + "\n"
