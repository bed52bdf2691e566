"""Molecular dynamics and relaxation with ASE's integrators and optimizers (``matscale md``,
``matscale relax``).

MD: NVE (velocity Verlet), NVT (Langevin) or NPT (isotropic Martyna–Tobias–Klein), with a log
of time (ps), potential, kinetic and total energy (eV), temperature (K), pressure (GPa) and
volume (Å³), and a trajectory file. :func:`energy_drift` turns an NVE log into the drift of
the total energy (meV/atom/ps). Relaxation: FIRE, BFGS or LBFGS, of positions or, through
ASE's ``FrechetCellFilter``, of positions and cell together.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from ase import Atoms, units

from matscale.errors import (
    DataError,
    ExtrapolationWarning,
    SimulationError,
    SimulationInterrupted,
)

Ensemble = Literal["nve", "nvt", "npt"]
Optimizer = Literal["fire", "bfgs", "lbfgs"]
#: Columns of the MD log, with their units.
LOG_COLUMNS = (
    "time_ps",
    "epot_eV",
    "ekin_eV",
    "etot_eV",
    "temperature_K",
    "pressure_GPa",
    "volume_A3",
)


@dataclass(kw_only=True)
class MDConfig:
    """One molecular dynamics run."""

    ensemble: Ensemble = "nvt"
    """``nve`` (velocity Verlet), ``nvt`` (Langevin) or ``npt`` (isotropic MTK barostat with a
    Nosé–Hoover chain; periodic cells only)."""
    timestep_fs: float = 1.0
    """Integration time step (fs)."""
    steps: int = 1000
    """Number of steps."""
    temperature_K: float = 300.0
    """Thermostat temperature and, unless ``initial_temperature_K`` is set, the temperature of
    the initial Maxwell–Boltzmann velocities (K)."""
    initial_temperature_K: float | None = None
    """Temperature of the initial velocities (K); None: ``temperature_K``. Velocities already
    on the structure are kept when this is 0."""
    friction_per_fs: float = 0.01
    """Langevin friction (1/fs)."""
    pressure_GPa: float = 0.0
    """NPT external pressure (GPa)."""
    thermostat_fs: float = 100.0
    """NPT thermostat damping time (fs)."""
    barostat_fs: float = 1000.0
    """NPT barostat damping time (fs)."""
    log_every: int = 10
    """Steps between log rows and trajectory frames."""
    seed: int = 0
    """Seed of the initial velocities and the Langevin noise."""

    def __post_init__(self) -> None:
        finite = math.isfinite
        _check(
            finite(self.timestep_fs) and self.timestep_fs > 0,
            "timestep_fs",
            f"must be a finite number > 0 fs, got {self.timestep_fs}",
        )
        _check(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        _check(
            finite(self.temperature_K) and self.temperature_K >= 0,
            "temperature_K",
            f"must be a finite number >= 0 K, got {self.temperature_K}",
        )
        t0 = self.initial_temperature_K
        _check(
            t0 is None or (finite(t0) and t0 >= 0),
            "initial_temperature_K",
            f"must be a finite number >= 0 K, got {t0}",
        )
        _check(
            finite(self.pressure_GPa),
            "pressure_GPa",
            f"must be a finite number, got {self.pressure_GPa}",
        )
        _check(
            finite(self.friction_per_fs) and self.friction_per_fs >= 0,
            "friction_per_fs",
            "must be a finite number >= 0",
        )
        _check(
            finite(self.thermostat_fs + self.barostat_fs)
            and self.thermostat_fs > 0
            and self.barostat_fs > 0,
            "thermostat_fs",
            "must be a finite number > 0",
        )
        _check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        _check(self.ensemble in ("nve", "nvt", "npt"), "ensemble", "must be nve, nvt or npt")


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise DataError(f"{name} {message}", field=name)


def check_ensemble(atoms: Atoms, cfg: MDConfig) -> None:
    """Refuse an ensemble the structure cannot have: NPT needs a cell periodic in x, y, z."""
    if cfg.ensemble == "npt" and not atoms.pbc.all():
        raise DataError("NPT needs a cell periodic in all three directions", field="pbc")


def make_dynamics(atoms: Atoms, cfg: MDConfig, *, rng: np.random.Generator) -> Any:
    """The ASE integrator of ``cfg`` for ``atoms`` (whose calculator is set)."""
    check_ensemble(atoms, cfg)
    dt = cfg.timestep_fs * units.fs
    if cfg.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if cfg.ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=cfg.temperature_K,
            friction=cfg.friction_per_fs / units.fs,
            rng=rng,
            fixcm=False,  # ASE's fixcm=True does not sample NVT exactly (its own warning)
        )
    if cfg.ensemble == "npt":
        from ase.md.nose_hoover_chain import IsotropicMTKNPT

        return IsotropicMTKNPT(
            atoms,
            timestep=dt,
            temperature_K=cfg.temperature_K,
            pressure_au=cfg.pressure_GPa * units.GPa,
            tdamp=cfg.thermostat_fs * units.fs,
            pdamp=cfg.barostat_fs * units.fs,
        )
    raise DataError(f"unknown ensemble {cfg.ensemble!r}; choose nve, nvt or npt")


def log_row(atoms: Atoms, time_ps: float) -> dict[str, float]:
    """One row of the MD log (units in the keys); pressure NaN without a 3D-periodic cell."""
    epot = float(atoms.get_potential_energy())
    ekin = float(atoms.get_kinetic_energy())
    periodic = bool(atoms.pbc.all())
    pressure = math.nan  # no cell, or a direct-force model (no stress)
    if periodic and "stress" in getattr(atoms.calc, "implemented_properties", ()):
        stress = atoms.get_stress(include_ideal_gas=True)
        pressure = float(-np.mean(stress[:3]) / units.GPa)
    return {
        "time_ps": time_ps,
        "epot_eV": epot,
        "ekin_eV": ekin,
        "etot_eV": epot + ekin,
        "temperature_K": float(atoms.get_temperature()),
        "pressure_GPa": pressure,
        "volume_A3": float(atoms.get_volume()) if periodic else math.nan,
    }


def run_md(
    atoms: Atoms,
    cfg: MDConfig,
    *,
    log: Path | None = None,
    trajectory: Path | None = None,
    progress: bool = True,
    observers: Sequence[tuple[Callable[[], None], int]] = (),
    append: bool = False,
) -> list[dict[str, float]]:
    """Run ``cfg`` on ``atoms`` (calculator set); returns the log rows (every
    ``cfg.log_every`` steps and the first), written to ``log`` as they come (whitespace-
    separated columns, :data:`LOG_COLUMNS`) and frames to ``trajectory`` (.traj, .extxyz, ...).
    Each of ``observers`` (a function, an interval in steps) is called as ASE's observers are.

    ``append``: continue an earlier run from its last frame. Rows and frames go after those
    already in ``log`` and ``trajectory``, its time going on from the log's last row, and the
    starting state (that frame) is not written again. ``atoms`` must be the trajectory's last
    frame (a :class:`DataError` otherwise: another start would be recorded as the earlier
    run's continuation), and its velocities are kept unless ``cfg.initial_temperature_K``
    asks for new ones."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    from matscale.progress import progress_bar

    rows: list[dict[str, float]] = []
    # The outputs' paths first, then the first forces, then the files, then the velocities: a
    # path that cannot be written, or a structure the model refuses, is reported before any
    # work or warning, and before an earlier run's log or trajectory there is emptied.
    check_outputs(log, trajectory)
    check_ensemble(atoms, cfg)
    t0 = cfg.initial_temperature_K
    if t0 is None:  # a continuation keeps its velocities; a new run draws them
        t0 = 0.0 if append else cfg.temperature_K
    if append and trajectory is not None:
        check_continues(atoms, trajectory)
    check_velocities(atoms, continuing=append and t0 == 0)
    mark_labeller(atoms)
    atoms.get_forces()  # computed once: the integrator's first step reuses them
    start_ps = last_time_ps(log) if append and log is not None else 0.0
    # opened to append whatever the mode, and emptied only once the trajectory could be
    # opened too: a trajectory that cannot be written must not cost the earlier log
    log_fh = _open_output(log, "a") if log is not None else None
    try:
        writer = _trajectory_writer(trajectory, append=append)
        if log_fh is not None and not append:
            log_fh.truncate(0)
            log_fh.seek(0)  # truncate keeps the position, which says whether a header is due
        rng = np.random.default_rng(cfg.seed)
        # a lone atom has no motion left once its centre of mass is at rest (and ASE's
        # Stationary would rescale its zero velocity to the temperature: NaN): it starts still
        if t0 > 0 and len(atoms) > 1:
            thermalize_momenta(atoms, t0, rng=rng)
            Stationary(atoms)
            if not atoms.pbc.any():
                # a linear molecule's inertia has a zero moment: ASE divides by it, warns, and
                # still removes the rotation about the other two axes
                with np.errstate(divide="ignore", invalid="ignore"):
                    ZeroRotation(atoms)
        dyn = make_dynamics(atoms, cfg, rng=rng)
        bar = progress_bar(
            total=cfg.steps, desc=f"MD {cfg.ensemble}", unit=" steps", enabled=progress
        )

        written = -1  # the last step whose row and frame are in the files

        def record() -> None:
            nonlocal written
            row = log_row(atoms, start_ps + dyn.nsteps * cfg.timestep_fs / 1000)
            rows.append(row)
            if append and dyn.nsteps == 0:  # the earlier run's last row and frame already
                written = 0
                return
            if log_fh is not None:
                if log_fh.tell() == 0:  # a new (or empty) log: its header first
                    log_fh.write("# " + " ".join(LOG_COLUMNS) + "\n")
                log_fh.write(" ".join(f"{row[c]:.8g}" for c in LOG_COLUMNS) + "\n")
                log_fh.flush()
            if writer is not None:
                writer(atoms)
            written = dyn.nsteps
            bar.update(dyn.nsteps - bar.n)
            bar.set_postfix(
                T=f"{row['temperature_K']:.0f}K", etot=f"{row['etot_eV']:.4f}", refresh=False
            )

        def check_finite() -> None:  # every step: the step's own energy, computed already
            epot = atoms.get_potential_energy()
            if not (np.isfinite(epot) and np.all(np.isfinite(atoms.get_momenta()))):
                raise SimulationError(
                    f"MD stopped at step {dyn.nsteps}: the energy or the velocities are no "
                    f"longer finite (E_pot {epot} eV); a timestep of {cfg.timestep_fs:g} fs may "
                    "be too long for these atoms"
                )

        try:
            dyn.attach(check_finite, interval=1)  # first: no row or frame of a step gone wrong
            dyn.attach(record, interval=cfg.log_every)  # ASE calls it at step 0 too
            for function, interval in observers:
                dyn.attach(function, interval=interval)
            try:
                dyn.run(cfg.steps)
            except DataError as exc:  # the geometry went wrong during the run: not the input's
                raise SimulationError(
                    f"MD stopped at step {dyn.nsteps}: {exc}; a timestep of "
                    f"{cfg.timestep_fs:g} fs may be too long for these atoms"
                ) from None
            except KeyboardInterrupt:  # Ctrl-C: say what the files kept and how to go on
                raise SimulationInterrupted(
                    interrupted_message(dyn.nsteps, written, log, trajectory)
                ) from None
            if dyn.nsteps % cfg.log_every:  # the last step is always logged and written
                record()
        finally:
            bar.close()
    finally:
        if log_fh is not None:
            log_fh.close()
    return rows


def interrupted_message(step: int, written: int, log: Path | None, trajectory: Path | None) -> str:
    """What an MD run stopped by Ctrl-C at ``step`` tells its user: the last step whose row
    and frame its files hold (``written``; -1: none), and how to continue from there."""
    paths = [str(p) for p in (log, trajectory) if p is not None]
    files, hold = " and ".join(paths), "hold" if len(paths) > 1 else "holds"
    said = f"MD interrupted at step {step}"
    if not files:
        return f"{said}; nothing was written (no log or trajectory)"
    if written < 0:
        return f"{said}, before its first row: {files} {hold} nothing of this run"
    said += f"; {files} {hold} its steps up to {written}"
    if trajectory is None:
        return said
    return f"{said}: to go on, give {trajectory} as the structure, with --append"


def last_time_ps(log: Path) -> float:
    """The time (ps) of the last row of an MD log ``log``; 0 for a missing or empty one."""
    if not log.is_file():
        return 0.0
    last = None
    with open(log) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                last = line
    if last is None:
        return 0.0
    try:
        return float(last.split()[LOG_COLUMNS.index("time_ps")])
    except (ValueError, IndexError):
        raise DataError(
            "its last row is not an MD log row (time in ps first): --append continues a log "
            "matscale md wrote",
            file=str(log),
        ) from None


def check_velocities(atoms: Atoms, *, continuing: bool) -> None:
    """Refuse velocities that are not finite (an input's, not a timestep's fault), and, for
    a run ``continuing`` from them, a structure of more than one atom that has none (a frame
    written without them would restart the run from rest)."""
    momenta = atoms.get_momenta()
    if not np.isfinite(momenta).all():
        bad = int(np.flatnonzero(~np.isfinite(momenta).all(axis=1))[0])
        raise DataError(
            f"the velocities are not finite (atom {bad}'s momenta: {momenta[bad]})",
            field="momenta",
        )
    if continuing and len(atoms) > 1 and not momenta.any():
        raise DataError(
            "the run continues its start's velocities, and it has none (all zero): give "
            "--initial-temperature (initial_temperature_K) to draw new ones",
            field="momenta",
        )


#: How far (Å) an appended run's start may lie from the trajectory's last frame: the digits
#: a text trajectory keeps (extended XYZ writes 8 decimals), far below any MD step.
CONTINUATION_TOLERANCE_A = 1e-5


def check_continues(atoms: Atoms, trajectory: Path) -> None:
    """Refuse to append to ``trajectory`` a run whose start ``atoms`` is not its last frame
    (elements, positions and cell to :data:`CONTINUATION_TOLERANCE_A`): the frames would
    replay or mix structures under one time axis. A missing or empty trajectory starts one."""
    import ase.io

    if not trajectory.is_file() or trajectory.stat().st_size == 0:
        return
    try:
        last: Atoms = ase.io.read(trajectory, index=-1)  # type: ignore[assignment]
    except Exception as exc:  # ASE raises many kinds for a file it cannot parse
        raise DataError(
            f"--append continues a trajectory ASE can read, and it cannot read this one "
            f"({type(exc).__name__}: {exc})",
            file=str(trajectory),
        ) from None
    same = (
        len(last) == len(atoms)
        and (last.numbers == atoms.numbers).all()
        and np.allclose(last.positions, atoms.positions, rtol=0, atol=CONTINUATION_TOLERANCE_A)
        and np.allclose(last.cell[:], atoms.cell[:], rtol=0, atol=CONTINUATION_TOLERANCE_A)
        and (last.pbc == atoms.pbc).all()
    )
    if not same:
        raise DataError(
            f"--append continues this trajectory from its last frame ({len(last)} atoms, "
            f"{last.get_chemical_formula()}), and the run starts elsewhere "
            f"({len(atoms)} atoms, {atoms.get_chemical_formula()}"
            f"{', other positions or cell' if len(last) == len(atoms) else ''}): start from "
            "the trajectory itself (its --index -1), or write to a new trajectory",
            file=str(trajectory),
        )


def _open_output(path: Path, mode: str) -> Any:
    """``open(path, mode)``, its failure a :class:`DataError` naming the file."""
    try:
        return open(path, mode)
    except OSError as exc:
        raise DataError(f"cannot write it ({exc.strerror})", file=str(path)) from None


def mark_labeller(atoms: Atoms) -> None:
    """From now on the frames of ``atoms`` carry its calculator's numbers: a matscale model's
    are marked with its ``labelled_by`` (as ``matscale predict`` marks its records), so that a
    trajectory or relaxed structure packed later cannot pass for reference data; a label
    the input carried from another labeller is dropped."""
    who = getattr(atoms.calc, "labelled_by", None)
    if isinstance(who, str):
        atoms.info["labelled_by"] = who
    else:
        atoms.info.pop("labelled_by", None)


def _trajectory_writer(path: Path | None, *, append: bool = False) -> Any:
    """A function appending frames to ``path`` (emptied first unless ``append``): ASE's
    Trajectory for .traj, ``ase.io.write`` (append) for any other format."""
    if path is None:
        return None
    if not append:  # its folder and format checked by the caller, before any work
        path.unlink(missing_ok=True)
    if path.suffix == ".traj":
        from ase.io.trajectory import Trajectory

        try:
            traj = Trajectory(str(path), "a" if append else "w")
        except OSError as exc:
            raise DataError(f"cannot write it ({exc.strerror})", file=str(path)) from None
        except Exception as exc:  # appending to a file that is no ASE trajectory
            raise DataError(
                f"not an ASE trajectory to append to ({type(exc).__name__}: {exc})",
                file=str(path),
            ) from None
        return traj.write
    import ase.io

    def write(atoms: Atoms) -> None:
        try:
            ase.io.write(path, atoms, append=True)
        except OSError as exc:
            raise DataError(f"cannot write it ({exc.strerror})", file=str(path)) from None

    return write


def check_outputs(log: Path | None, trajectory: Path | None) -> None:
    """Refuse, before any work, a log or trajectory that could not be written."""
    for path in (log, trajectory):
        if path is not None:
            check_output_path(path)
    if trajectory is not None:
        check_output_format(trajectory, frames=True)


def check_output_path(path: Path) -> None:
    """Refuse, before any work, an output file whose folder is missing or not writable (a
    mistyped folder is a mistake to report, not one to create)."""
    if path.is_dir():  # ASE would write a bundle into it, or fail after the work
        raise DataError("is a folder: give a file name", file=str(path))
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise DataError("no folder to write it in, or not writable", file=str(path))


#: Formats ASE writes one frame at a time but cannot read back as several when appended to:
#: an animated XSF is written in one call, not frame by frame.
NOT_APPENDABLE = frozenset({"xsf"})


def check_output_format(path: Path, *, frames: bool = False) -> None:
    """Refuse, before any work, a structure file whose suffix names no format ASE writes, and
    for a trajectory (``frames``) one that holds a single structure or that ASE cannot read
    back frame by frame (POSCAR, LAMMPS data, PNG: each frame would replace or garble the
    last)."""
    from ase.io.formats import UnknownFileTypeError, filetype, ioformats

    try:
        name = filetype(str(path), read=False)  # without reading: the suffix's format
    except UnknownFileTypeError:
        name = ""
    if name not in ioformats or not ioformats[name].can_write:
        raise DataError(
            f"no structure format ASE writes has the suffix {path.suffix!r}: use .extxyz or .traj",
            file=str(path),
        )
    form = ioformats[name]
    if frames and (form.single or not form.can_read or name in NOT_APPENDABLE):
        raise DataError(
            f"{name} files hold one structure (or cannot be read back frame by frame): a "
            "trajectory needs .extxyz or .traj (or .db, .json, .cif, .pdb)",
            file=str(path),
        )


#: Change of the total energy over an NVE run (meV/atom) past which it is not conserved
#: enough to trust: well-integrated runs here change by < 0.1 (README, MD drift), a run
#: blown up by its timestep by volts.
NVE_TOLERANCE_MEV_PER_ATOM = 10.0


def nve_warning(rows: list[dict[str, float]], n_atoms: int, timestep_fs: float) -> str | None:
    """A warning when the total energy of an NVE run's log ``rows`` changed by more than
    :data:`NVE_TOLERANCE_MEV_PER_ATOM` between its first and last row (None otherwise)."""
    change = 1000.0 * (rows[-1]["etot_eV"] - rows[0]["etot_eV"]) / n_atoms
    if abs(change) <= NVE_TOLERANCE_MEV_PER_ATOM:
        return None
    return (
        f"the total energy changed by {change:+.4g} meV/atom over this NVE run, which should "
        f"conserve it: a timestep of {timestep_fs:g} fs is likely too long for this system"
    )


def energy_drift(rows: list[dict[str, float]], n_atoms: int) -> float:
    """Slope of the total energy against time, by least squares (meV/atom/ps)."""
    t = np.array([r["time_ps"] for r in rows])
    e = np.array([r["etot_eV"] for r in rows])
    if len(t) < 2 or np.ptp(t) == 0:
        return math.nan
    slope = np.polyfit(t, e, 1)[0]  # eV/ps
    return float(1000 * slope / n_atoms)


@dataclass(kw_only=True)
class RelaxConfig:
    """One relaxation."""

    optimizer: Optimizer = "fire"
    """``fire``, ``bfgs`` or ``lbfgs`` (ASE's)."""
    fmax: float = 0.05
    """Converged when every force (and cell force) is below this (eV/Å)."""
    steps: int = 500
    """Most optimizer steps."""
    cell: bool = False
    """Relax the cell too (ASE's FrechetCellFilter; periodic cells only)."""
    pressure_GPa: float = 0.0
    """External pressure for cell relaxation (GPa)."""

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.fmax) and self.fmax > 0,
            "fmax",
            f"must be a finite number > 0 eV/Å, got {self.fmax}",
        )
        _check(
            math.isfinite(self.pressure_GPa),
            "pressure_GPa",
            f"must be a finite number, got {self.pressure_GPa}",
        )
        _check(self.steps >= 0, "steps", f"must be >= 0, got {self.steps}")
        _check(
            self.optimizer in ("fire", "bfgs", "lbfgs"), "optimizer", "must be fire, bfgs or lbfgs"
        )
        _check(
            self.cell or self.pressure_GPa == 0.0,
            "pressure_GPa",
            f"acts on the cell: {self.pressure_GPa} GPa needs the cell relaxed too (--cell)",
        )


@dataclass
class RelaxResult:
    """What a relaxation did: energies (eV), largest force (eV/Å), steps, convergence."""

    initial_energy_eV: float
    final_energy_eV: float
    max_force_eV_per_A: float
    steps: int
    converged: bool
    volume_A3: float | None
    left_training_data: list[str] = field(default_factory=list)
    """The contacts shorter than any in the head's training data that the run reached (its
    :class:`~matscale.errors.ExtrapolationWarning` messages, as shown): a relaxation that
    converges there (a crystal collapsed under pressure) converged on the model's
    extrapolation, not on the level of theory."""


def relax(
    atoms: Atoms, cfg: RelaxConfig, *, trajectory: Path | None = None, progress: bool = True
) -> RelaxResult:
    """Relax ``atoms`` (calculator set) in place."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE, LBFGS

    from matscale.progress import progress_bar

    check_outputs(None, trajectory)  # before the first energy: no work lost to a bad path
    mark_labeller(atoms)
    optimizers = {"fire": FIRE, "bfgs": BFGS, "lbfgs": LBFGS}
    if cfg.optimizer not in optimizers:
        raise DataError(f"unknown optimizer {cfg.optimizer!r}; choose fire, bfgs or lbfgs")
    if cfg.cell and not atoms.pbc.all():
        raise DataError(
            "cell relaxation needs a cell periodic in all three directions", field="pbc"
        )
    target: Any = atoms
    if cfg.cell:
        target = FrechetCellFilter(atoms, scalar_pressure=cfg.pressure_GPa * units.GPa)
    left: list[str] = []
    with warnings.catch_warnings():
        # FrechetCellFilter takes the matrix logarithm of the cell's deformation whenever it
        # reads positions or forces; scipy warns whenever its own error estimate exceeds a
        # tight tolerance, dozens of times per cell relaxation, of an error far below the
        # forces'
        warnings.filterwarnings(
            "ignore", message="logm result may be inaccurate", category=RuntimeWarning
        )
        warnings.showwarning = _noting(ExtrapolationWarning, left, warnings.showwarning)
        if atoms.calc is not None and atoms.calc.results and not atoms.calc.check_state(atoms):
            # the start's numbers were computed before, its warnings shown then: computed
            # again here, so that the start's short contacts are in left_training_data too
            atoms.calc.reset()
        initial = float(atoms.get_potential_energy())
        opt = optimizers[cfg.optimizer](target, logfile=None)
        if trajectory is not None:
            writer = _trajectory_writer(trajectory)
            opt.attach(lambda: writer(atoms))
        bar = progress_bar(
            total=cfg.steps, desc=f"relax {cfg.optimizer}", unit=" steps", enabled=progress
        )

        def tick() -> None:
            fmax = float(np.sqrt((target.get_forces() ** 2).sum(axis=1).max()))
            bar.update(opt.nsteps - bar.n)
            bar.set_postfix(
                fmax=f"{fmax:.3f}", energy=f"{atoms.get_potential_energy():.4f}", refresh=False
            )

        opt.attach(tick)
        try:
            converged = bool(opt.run(fmax=cfg.fmax, steps=cfg.steps))
        except KeyboardInterrupt:  # Ctrl-C: where the relaxation stood, and what is kept
            said = f"relaxation interrupted at step {opt.nsteps}"
            if trajectory is not None:
                said += (f"; {trajectory} holds its steps so far: to go on, relax its last "
                         "frame (--index -1)")  # fmt: skip
            raise SimulationInterrupted(said) from None
        finally:
            bar.close()
        forces = target.get_forces()
    return RelaxResult(
        initial_energy_eV=initial,
        final_energy_eV=float(atoms.get_potential_energy()),
        max_force_eV_per_A=float(np.sqrt((forces**2).sum(axis=1).max())),
        steps=int(opt.nsteps),
        converged=converged,
        volume_A3=float(atoms.get_volume()) if atoms.pbc.all() else None,
        left_training_data=left,
    )


def _noting(
    category: type[Warning], into: list[str], show: Callable[..., None]
) -> Callable[..., None]:
    """``show`` (a ``warnings.showwarning``) that also appends the text of each warning of
    ``category`` it shows to ``into``."""

    def shown(message: Warning | str, kind: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(kind, category):
            into.append(str(message))
        show(message, kind, *args, **kwargs)

    return shown
