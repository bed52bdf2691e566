"""Run logs: a JSONL file of metrics, TensorBoard events, a progress bar and a summary."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

#: Prefix of the metrics of one held-out family: ``holdout:surface/forces_mae_meV_per_A``.
HOLDOUT_FAMILY = "holdout:"


class RunLog:
    """Writes ``metrics.jsonl`` and TensorBoard events under ``run_dir`` (rank 0 only) and
    shows a progress bar with ETA, atoms/s, the share of time spent waiting for batches
    (``data``) and memory. Each step's row has its ``step_s`` (the training step) and
    ``data_s`` (waiting for its batches, seconds), and the run's ``data_share`` so far."""

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool,
        progress: bool,
        total: int,
        start: int,
        every: int = 1,
    ):
        self.enabled = enabled
        self.stdout_gone = False
        self.every = max(1, every)
        self.t0 = time.perf_counter()
        self.atoms = 0
        self.structures = 0
        self.data_s = 0.0  # waiting for batches (reading them, building their graphs)
        self.step_s = 0.0  # in the training step itself
        self.jsonl = None
        self.tb = None
        self.bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "metrics.jsonl"
        if path.exists():  # a resumed run logs as if uninterrupted: drop rows after the restart
            rows = [
                r
                for r in path.read_text().splitlines()
                if r.strip() and json.loads(r).get("step", 0) <= start
            ]
            path.write_text("".join(r + "\n" for r in rows))
        self.jsonl = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional; the JSONL file has everything
            self.tb = None
        if progress:
            from matscale.progress import progress_bar

            self.bar = progress_bar(total=total, initial=start, desc="training", unit=" steps")

    def text(self, line: str) -> None:
        """A line for the reader (above the progress bar)."""
        if self.enabled:
            self._print(line)

    def _print(self, line: str) -> None:
        if self.stdout_gone:
            return
        try:
            (self.bar.write if self.bar else print)(line)
            sys.stdout.flush()
        except BrokenPipeError:
            # the reader of our output left (`matscale train ... | head`): the run goes on
            # (metrics.jsonl has everything); stdout points at /dev/null from now on, so
            # that later lines and the interpreter's final flush stay quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            self.stdout_gone = True

    def step(self, step: int, stats: dict[str, Any], lr: float) -> None:
        """Account for one optimizer step; log every so often."""
        self.atoms += stats["atoms"]
        self.structures += stats["structures"]
        self.data_s += stats.get("data_s", 0.0)
        self.step_s += stats.get("step_s", 0.0)
        if not self.enabled:
            return
        seconds = time.perf_counter() - self.t0
        rates = {
            "atoms_per_s": self.atoms / seconds,
            "structures_per_s": self.structures / seconds,
            "data_share": self.data_share,
        }
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(
                loss=f"{stats['loss']:.4f}",
                atoms_s=f"{rates['atoms_per_s']:.0f}",
                data=f"{100 * self.data_share:.0f}%",
                mem=f"{peak_resident_mib():.0f}MiB",
                refresh=False,
            )
        self._write(
            {
                "step": step,
                "kind": "train",
                "lr": lr,
                **stats,
                **rates,
                "seconds": seconds,
                "peak_rss_mib": peak_resident_mib(),
            }
        )

    @property
    def data_share(self) -> float:
        """Share of this process's training time (steps and the waits between them, not
        evaluations or checkpoints) spent waiting for batches: reading them and building their
        graphs. Rank 0's; 0 before the first step."""
        total = self.data_s + self.step_s
        return self.data_s / total if total > 0 else 0.0

    def metrics(self, step: int, metrics: dict[str, float], prefix: str) -> None:
        """Validation or final metrics."""
        if not self.enabled:
            return
        self._write({"step": step, "kind": prefix, **metrics})
        if prefix == "final":  # :meth:`summary`'s table follows and shows the same numbers
            return
        main = {
            k: v for k, v in metrics.items() if "/" not in k or k.startswith(("test/", "holdout/"))
        }
        self.text(f"[{prefix} @ step {step}] " + ", ".join(f"{k} {v:.2f}" for k, v in main.items()))

    def summary(
        self, metrics: dict[str, float], sources: list[str], *, skipped_steps: int = 0
    ) -> None:
        """The closing table: MAE per source and target, validation and test; and the steps
        skipped for a non-finite loss or gradient, if any."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        seconds = time.perf_counter() - self.t0
        if self.atoms:
            rate = self.atoms / max(seconds, 1e-9)
            self._print(
                f"trained for {_duration(seconds)} at {rate:,.0f} atoms/s "
                f"({100 * self.data_share:.0f} % of the steps' time waiting for batches); "
                "mean absolute errors (validation / test):"
            )
        else:
            self._print(
                "the run had already finished; its model's mean absolute errors "
                "(validation / test):"
            )
        if skipped_steps:
            self._print(
                f"{skipped_steps} step(s) skipped: non-finite loss or gradient (metrics.jsonl)"
            )
        targets = [
            ("energy", "meV_per_atom", "energy meV/atom"),
            ("forces", "meV_per_A", "forces meV/Å"),
            ("stress", "meV_per_A3", "stress meV/Å³"),
        ]
        # a run without a validation split has test errors only: their columns still show
        shown = [
            t for t in targets if {f"{t[0]}_mae_{t[1]}", f"test/{t[0]}_mae_{t[1]}"} & set(metrics)
        ]
        self._print(f"  {'source':<16}" + "".join(f"{t[2]:>22}" for t in shown))
        for source in [*sources, None]:
            prefix = f"{source}/" if source else ""
            cells = []
            for name, unit, _ in shown:
                val = metrics.get(f"{prefix}{name}_mae_{unit}")
                test = metrics.get(f"test/{prefix}{name}_mae_{unit}")
                cells.append(_pair(val, test))
            self._print(f"  {source or 'all':<16}" + "".join(f"{c:>22}" for c in cells))
        held = {k: v for k, v in metrics.items() if k.startswith("holdout/") and k.count("/") == 1}
        if held:
            self._print(
                "  held-out families: " + ", ".join(f"{k[8:]} {v:.1f}" for k, v in held.items())
            )
        per_family = {
            k.split("/")[0].removeprefix(HOLDOUT_FAMILY): v
            for k, v in metrics.items()
            if k.startswith(HOLDOUT_FAMILY)
            and k.endswith("/forces_mae_meV_per_A")
            and k.count("/") == 1
        }
        if per_family:
            self._print(
                "  held out, forces meV/Å per family: "
                + ", ".join(f"{f} {v:.1f}" for f, v in per_family.items())
            )

    def _write(self, record: dict[str, Any]) -> None:
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tb is not None and (record["kind"] != "train" or record["step"] % self.every == 0):
            for k, v in record.items():
                if isinstance(v, int | float) and k not in ("step",):
                    self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def close(self) -> None:
        """Flush and close files and the bar."""
        if self.bar is not None:
            self.bar.close()
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _duration(seconds: float) -> str:
    """``12 s`` under a minute, ``3.6 min`` from there."""
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def _pair(a: float | None, b: float | None) -> str:
    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    return f"{fmt(a)} / {fmt(b)}"


def peak_resident_mib() -> float:
    """This process's peak resident memory so far (MiB): Linux's ``VmHWM``, elsewhere
    ``ru_maxrss``. Not ``ru_maxrss`` on Linux: it survives ``exec``, so a process started
    from a large one (a run launched by a test worker or a notebook) reports its parent's peak
    as its own (measured: a bare interpreter started from a 1 GB parent reports 979 MiB)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
