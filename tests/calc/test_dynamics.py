"""``matscale md`` and ``matscale relax``: ensembles, logs, trajectories, drift, convergence."""

from __future__ import annotations

import math
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes

from matscale import console
from matscale.calc import MatscaleCalculator, dynamics
from matscale.calc.dynamics import MDConfig, RelaxConfig, energy_drift, relax, run_md
from matscale.cli import main
from matscale.errors import DataError, SimulationError
from tests.calc.structures import alloy


def test_energy_drift_is_the_least_squares_slope() -> None:
    rows = [{"time_ps": t, "etot_eV": 2.0 + 0.004 * t} for t in np.linspace(0, 10, 50)]
    assert energy_drift(rows, n_atoms=4) == pytest.approx(1.0)  # 4 meV/ps over 4 atoms


def test_an_nve_run_that_did_not_conserve_energy_is_warned_about() -> None:
    from matscale.calc.dynamics import nve_warning

    steady = [{"etot_eV": 2.0}, {"etot_eV": 2.0 + 0.0004}]  # 0.1 meV/atom over 4 atoms
    assert nve_warning(steady, n_atoms=4, timestep_fs=1.0) is None
    blown = [{"etot_eV": 9.79}, {"etot_eV": 98.5}]  # 13 atoms heated by 40 fs steps
    message = nve_warning(blown, n_atoms=13, timestep_fs=40.0)
    assert message is not None and "+6824 meV/atom" in message and "40 fs" in message


@pytest.mark.parametrize("ensemble", ["nve", "nvt", "npt"])
def test_md_runs_each_ensemble_and_logs(tiny_model: Path, tmp_path: Path, ensemble: str) -> None:
    atoms = alloy(0)
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    cfg = MDConfig(ensemble=ensemble, timestep_fs=1.0, steps=20, temperature_K=600, log_every=5)  # type: ignore[arg-type]
    rows = run_md(
        atoms, cfg, log=tmp_path / "md.log", trajectory=tmp_path / "md.traj", progress=False
    )
    assert [r["time_ps"] for r in rows] == pytest.approx([0, 0.005, 0.01, 0.015, 0.02])
    assert all(math.isfinite(r["pressure_GPa"]) and r["temperature_K"] > 0 for r in rows)
    log = (tmp_path / "md.log").read_text().splitlines()
    assert log[0].startswith("# time_ps epot_eV") and len(log) == 6
    frames = ase.io.read(tmp_path / "md.traj", ":")
    assert len(frames) == 5
    np.testing.assert_allclose(frames[-1].positions, atoms.positions)


def test_the_last_step_is_logged_and_written_whatever_the_interval(
    tiny_model: Path, tmp_path: Path
) -> None:
    atoms = alloy(0)
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    cfg = MDConfig(ensemble="nvt", timestep_fs=1.0, steps=13, temperature_K=300, log_every=5)
    rows = run_md(atoms, cfg, trajectory=tmp_path / "md.extxyz", progress=False)
    assert [r["time_ps"] for r in rows] == pytest.approx([0, 0.005, 0.01, 0.013])
    assert rows[-1]["temperature_K"] == pytest.approx(atoms.get_temperature())
    frames = ase.io.read(tmp_path / "md.extxyz", ":")
    assert len(frames) == 4
    np.testing.assert_allclose(frames[-1].positions, atoms.positions, atol=1e-6)  # 8 digits


def test_md_and_relax_outputs_say_the_model_labelled_them(tiny_model: Path, tmp_path: Path) -> None:
    # their frames kept the input's source with the model's energies and forces, and no
    # labelled_by: packed later, they passed for the source's reference data
    calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    made = f"matscale {tiny_model}, head emt"
    assert calc.labelled_by == made
    atoms = alloy(0)
    atoms.info.update(source="emt", labelled_by="an earlier teacher")
    atoms.calc = calc
    cfg = MDConfig(ensemble="nve", timestep_fs=1.0, steps=4, temperature_K=300, log_every=2)
    run_md(atoms, cfg, trajectory=tmp_path / "md.extxyz", progress=False)
    run_md(atoms, cfg, trajectory=tmp_path / "md.traj", progress=False)
    relax(atoms, RelaxConfig(steps=3), progress=False)
    ase.io.write(tmp_path / "relaxed.extxyz", atoms)
    for name in ("md.extxyz", "md.traj", "relaxed.extxyz"):
        frames = ase.io.read(tmp_path / name, ":")
        assert {f.info.get("labelled_by") for f in frames} == {made}, name
    # another calculator's numbers drop a matscale model's mark
    from ase.calculators.emt import EMT

    atoms.calc = EMT()
    relax(atoms, RelaxConfig(steps=2), progress=False)
    assert "labelled_by" not in atoms.info


class _FailsAfter(Calculator):
    """Harmonic wells around the start, whose energy becomes NaN after ``good`` calls."""

    implemented_properties = ("energy", "forces")

    def __init__(self, start: np.ndarray, good: int) -> None:
        super().__init__()
        self.start, self.good, self.calls = start.copy(), good, 0

    def calculate(self, atoms=None, properties=None, system_changes=all_changes) -> None:  # type: ignore[no-untyped-def]
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        delta = self.atoms.positions - self.start
        energy = float((delta**2).sum()) if self.calls <= self.good else math.nan
        self.results = {"energy": energy, "forces": -2 * delta}


def test_md_stops_with_an_error_when_the_energy_is_no_longer_finite(tmp_path: Path) -> None:
    atoms = alloy(0)
    atoms.calc = _FailsAfter(atoms.positions, good=7)
    cfg = MDConfig(ensemble="nve", timestep_fs=1.0, steps=50, temperature_K=300, log_every=1)
    # calls: the start, then one per step: the 8th, at step 7, is the first NaN
    with pytest.raises(SimulationError, match="MD stopped at step 7: the energy or the velocities"):
        run_md(atoms, cfg, log=tmp_path / "md.log", progress=False)
    assert len((tmp_path / "md.log").read_text().splitlines()) == 1 + 7  # kept: steps 0-6


def test_md_blown_up_by_its_timestep_stops_with_an_error(tiny_model: Path) -> None:
    # periodic: the energies stay finite (1e15 eV) while the atoms fly off
    atoms = alloy(0)
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    cfg = MDConfig(ensemble="nve", timestep_fs=1e6, steps=10, temperature_K=300, log_every=1)
    # the run's failure, not the input's: the step, the geometry's complaint, the likely cause
    with pytest.raises(
        SimulationError,
        match=r"MD stopped at step \d+: field 'positions': an atom lies .* flown away.*"
        r"a timestep of 1e\+06 fs may be too long",
    ):
        run_md(atoms, cfg, progress=False)


def test_nve_conserves_energy_of_a_molecule(tiny_model: Path) -> None:
    mol = molecule("CH4")
    mol.calc = MatscaleCalculator.from_file(tiny_model, head="mol")
    rows = run_md(
        mol,
        MDConfig(ensemble="nve", timestep_fs=0.25, steps=200, temperature_K=300, log_every=10),
        progress=False,
    )
    etot = np.array([r["etot_eV"] for r in rows])
    ekin = np.array([r["ekin_eV"] for r in rows])
    assert np.ptp(ekin) > 10 * np.ptp(etot)  # energy flows between kinetic and potential...
    assert np.ptp(etot) < 5e-3  # ...while the total stays put
    assert all(math.isnan(r["pressure_GPa"]) for r in rows)  # a molecule has no pressure


def test_relax_positions_and_cell(tiny_model: Path) -> None:
    calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    atoms = alloy(3)
    atoms.calc = calc
    result = relax(atoms, RelaxConfig(optimizer="bfgs", fmax=0.002, steps=300), progress=False)
    assert result.converged and result.final_energy_eV < result.initial_energy_eV
    assert np.abs(atoms.get_forces()).max() < 0.002
    atoms = alloy(3)
    atoms.calc = calc
    volume = atoms.get_volume()
    result = relax(
        atoms, RelaxConfig(optimizer="bfgs", fmax=0.002, steps=500, cell=True), progress=False
    )
    assert result.converged and result.volume_A3 != pytest.approx(volume, rel=1e-4)
    # FrechetCellFilter converges cell forces σ·V/N: stress within fmax·N/V
    assert np.abs(atoms.get_stress()).max() < 0.002 * len(atoms) / atoms.get_volume()


def test_a_cell_relaxation_keeps_scipys_logm_noise_out_of_the_users_output(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FrechetCellFilter's matrix logarithm made scipy print dozens of "logm result may be
    inaccurate" lines per `relax --cell`; other warnings still reach the user."""
    import warnings

    from ase.filters import FrechetCellFilter

    real = FrechetCellFilter.get_forces

    def noisy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        warnings.warn(
            "logm result may be inaccurate, approximate err = 1e-13", RuntimeWarning, stacklevel=2
        )
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FrechetCellFilter, "get_forces", noisy)
    atoms = alloy(3)
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relax(atoms, RelaxConfig(steps=3, cell=True), progress=False)
        warnings.warn("another", RuntimeWarning, stacklevel=1)
    said = [str(w.message) for w in caught]
    assert not any("logm" in m for m in said) and "another" in said


def test_a_relaxation_says_when_it_left_the_training_data(tiny_model: Path) -> None:
    """`relax --cell --pressure 200` collapsed MgO to V/V0 0.36 on the foundation model and
    reported "converged": its result now lists the contacts shorter than any in training it
    reached (the warnings were shown partway and lost in the output)."""
    import warnings

    from ase.build import bulk

    from matscale.errors import ExtrapolationWarning

    squeezed = bulk("Cu", "fcc", a=3.0, cubic=True)  # Cu-Cu 2.12 Å, shorter than in training
    squeezed.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = relax(squeezed, RelaxConfig(steps=2), progress=False)
    left = result.left_training_data
    assert left and "Cu-Cu contact shorter than" in left[0]
    assert any(issubclass(w.category, ExtrapolationWarning) for w in caught)  # still shown
    roomy = bulk("Cu", "fcc", a=3.6, cubic=True)  # 2.55 Å, as in training
    roomy.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    assert relax(roomy, RelaxConfig(steps=2), progress=False).left_training_data == []


def test_md_and_relax_verbs(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = tmp_path / "start.extxyz"
    ase.io.write(start, alloy(1))
    args = [
        "md",
        str(tiny_model),
        str(start),
        "--head",
        "emt",
        "--ensemble",
        "nve",
        "--steps",
        "20",
    ]
    code = main(
        [
            *args,
            "--traj",
            str(tmp_path / "t.extxyz"),
            "--log",
            str(tmp_path / "m.log"),
            "--no-progress",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "20 steps of 1 fs" in out and "total energy drift" in out
    assert len(ase.io.read(tmp_path / "t.extxyz", ":")) == 3  # steps 0, 10, 20
    relaxed = tmp_path / "relaxed.extxyz"
    code = main(
        [
            "relax",
            str(tiny_model),
            str(start),
            "--head",
            "emt",
            "--optimizer",
            "lbfgs",
            "--out",
            str(relaxed),
            "--no-progress",
        ]
    )
    assert code == 0 and '"converged": true' in capsys.readouterr().out
    assert np.abs(ase.io.read(relaxed).get_forces()).max() < 0.05
    code = main(
        ["relax", str(tiny_model), str(start), "--head", "emt", "--steps", "1", "--fmax", "1e-5"]
    )
    assert code == 1 and "not converged in 1 steps (largest force" in capsys.readouterr().err
    assert main(["md", str(tiny_model), str(tmp_path / "none.xyz"), "--head", "emt"]) == 2
    assert "none.xyz: no such file" in capsys.readouterr().err
    mol = tmp_path / "mol.xyz"
    ase.io.write(mol, molecule("H2O"))
    assert main(["relax", str(tiny_model), str(mol), "--head", "mol", "--cell"]) == 2
    assert "cell relaxation needs a cell periodic in all three" in capsys.readouterr().err


def test_verbs_refuse_bad_settings_in_one_line(
    tiny_model: Path, tiny_direct_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start = tmp_path / "start.extxyz"
    ase.io.write(start, alloy(1))
    head = ["--head", "emt", "--no-progress"]
    cases = [
        (
            ["md", str(tiny_model), str(start), "--temperature", "-10"],
            "temperature_K must be a finite number >= 0",
        ),
        (
            ["md", str(tiny_model), str(start), "--temperature", "inf"],
            "temperature_K must be a finite number >= 0 K, got inf",
        ),
        (
            ["md", str(tiny_model), str(start), "--ensemble", "npt", "--pressure", "nan"],
            "field 'pressure_GPa': pressure_GPa must be a finite number, got nan",
        ),
        (
            ["relax", str(tiny_model), str(start), "--cell", "--pressure", "inf"],
            "field 'pressure_GPa': pressure_GPa must be a finite number, got inf",
        ),
        (["md", str(tiny_model), str(tmp_path), "--steps", "1"], "is a folder, not a structure"),
        (
            ["relax", str(tiny_model), str(start), "--index", "x"],
            "--index must be a frame number (0 the first, -1 the last), got 'x'",
        ),
        (  # ASE would read frame 0
            ["relax", str(tiny_model), str(start), "--index", "-3"],
            "--index -3 is out of range: the file has 1 frame",
        ),
        (  # a mistyped folder is reported, not created
            ["md", str(tiny_model), str(start), "--traj", str(tmp_path / "no/dir/md.traj")],
            "no/dir/md.traj: no folder to write it in",
        ),
        (
            ["md", str(tiny_model), str(start), "--index", "3"],
            "--index 3 is out of range: the file has 1 frame",
        ),
        (["md", str(tiny_direct_model), str(start), "--ensemble", "npt"], "NPT needs stress"),
        (["relax", str(tiny_direct_model), str(start), "--cell"], "cell relaxation needs stress"),
        (["relax", str(tiny_model), str(start), "--fmax", "-1"], "fmax must be a finite number >"),
        (["relax", str(tiny_model), str(start), "--fmax", "inf"], "got inf"),  # "converged"
        # ASE wrote a bundle into a folder, or failed after the relaxation's work
        (["relax", str(tiny_model), str(start), "--out", str(tmp_path)], "is a folder: give a"),
        (["md", str(tiny_model), str(start), "--traj", str(tmp_path)], "is a folder: give a"),
        (["md", str(tiny_model), str(start), "--append", "--overwrite"], "give one"),
        (
            ["md", str(tiny_model), str(start), "--log", str(tmp_path / "no/dir/x.log")],
            "no/dir/x.log: no folder to write it in",
        ),
        (["md", str(tiny_model), str(start), "--device", "cuda:7"], "field 'device'"),
        (
            ["relax", str(tiny_model), str(start), "--pressure", "5"],
            "5.0 GPa needs the cell relaxed too (--cell)",
        ),
        (
            [
                *("md", str(tiny_model), str(start), "--traj", str(tmp_path / "md.weirdext")),
                *("--log", str(tmp_path / "refused.log")),
            ],
            "no structure format ASE writes has the suffix '.weirdext'",
        ),
        # a trajectory in a one-structure format kept only the last frame (POSCAR), or
        # garbled them (LAMMPS data)
        (
            ["md", str(tiny_model), str(start), "--traj", str(tmp_path / "md.vasp")],
            "md.vasp: vasp files hold one structure",
        ),
        (
            ["md", str(tiny_model), str(start), "--traj", str(tmp_path / "md.lammps-data")],
            "lammps-data files hold one structure",
        ),
        # an option of another ensemble was ignored without a word
        (
            ["md", str(tiny_model), str(start), "--ensemble", "nve", "--pressure", "3"],
            "--pressure is for --ensemble npt; this run is nve",
        ),
        (
            ["md", str(tiny_model), str(start), "--ensemble", "npt", "--friction", "0.5"],
            "--friction is for --ensemble nvt; this run is npt",
        ),
        # checked before the relaxation, whose work would be lost
        (
            ["relax", str(tiny_model), str(start), "--out", str(tmp_path / "no/dir/r.extxyz")],
            "no folder to write it in",
        ),
    ]
    for args, message in cases:
        assert main([*args, *head]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
    assert not (tmp_path / "refused.log").exists()  # refused before any output was opened
    assert not (tmp_path / "no").exists()


def test_outputs_onto_the_input_or_each_other_are_refused_and_the_input_survives(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A relaxation written over its own 4-frame input left 1 frame, and an MD trajectory
    replaced its input: both are refused before any work, the file untouched."""
    start = tmp_path / "frames.extxyz"
    ase.io.write(start, [alloy(k) for k in range(4)])
    before = start.read_bytes()
    same_by_another_name = str(tmp_path / "." / "frames.extxyz")
    head = ["--head", "emt", "--no-progress", "--steps", "2"]
    cases = [
        (["relax", str(tiny_model), str(start), "--out", str(start)], "--out is the input"),
        (["relax", str(tiny_model), str(start), "--traj", same_by_another_name], "--traj is the"),
        (["md", str(tiny_model), str(start), "--traj", str(start)], "--traj is the input"),
        (["md", str(tiny_model), str(start), "--log", str(start)], "--log is the input"),
        (
            [
                *("relax", str(tiny_model), str(start)),
                *("--out", str(tmp_path / "r.extxyz"), "--traj", str(tmp_path / "r.extxyz")),
            ],
            "--traj is --out's file",
        ),
    ]
    for args, message in cases:
        assert main([*args, *head]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)
        assert start.read_bytes() == before
    assert not (tmp_path / "r.extxyz").exists()


def test_a_lone_atom_runs_md_from_rest(tiny_model: Path, tmp_path: Path) -> None:
    """With its centre of mass at rest a single atom has no motion left: it starts still
    (ASE's Stationary rescaled its zero velocity to NaN, reported as a too-long timestep)."""
    atom = alloy(0)[:1]
    atom.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    rows = run_md(atom, MDConfig(ensemble="nve", steps=3, temperature_K=300.0), progress=False)
    assert all(np.isfinite(r["etot_eV"]) and r["temperature_K"] == 0.0 for r in rows)


def test_a_refused_md_run_leaves_an_earlier_runs_files_alone(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The structure is checked (the first forces) before the log and trajectory are opened:
    a mistake in the input does not empty the files of the run before."""
    bad = alloy(1)
    bad[0].symbol = "Fe"  # an element the head never saw
    start = tmp_path / "fe.extxyz"
    ase.io.write(start, bad)
    log, traj = tmp_path / "keep.log", tmp_path / "keep.extxyz"
    log.write_text("earlier\n")
    traj.write_text("earlier\n")
    args = ["md", str(tiny_model), str(start), "--head", "emt", "--no-progress", "--overwrite"]
    assert main([*args, "--log", str(log), "--traj", str(traj)]) == 2
    err = capsys.readouterr().err  # the file and frame named, as for eval
    assert f"{start}, record -1, field 'numbers': element Fe (Z=26) never appeared" in err
    assert log.read_text() == traj.read_text() == "earlier\n"
    slab = alloy(1)
    slab.pbc = (True, True, False)  # NPT needs all three periodic: refused before the files
    ase.io.write(start, slab)
    assert main([*args, "--ensemble", "npt", "--log", str(log), "--traj", str(traj)]) == 2
    err = capsys.readouterr().err
    assert f"{start}, record -1, field 'pbc': NPT needs a cell periodic in all three" in err
    assert log.read_text() == traj.read_text() == "earlier\n"


def test_md_with_direct_forces_logs_no_pressure(tiny_direct_model: Path) -> None:
    atoms = alloy(2)
    atoms.calc = MatscaleCalculator.from_file(tiny_direct_model, head="emt")
    rows = run_md(atoms, MDConfig(ensemble="nve", steps=4, log_every=2), progress=False)
    assert len(rows) == 3 and all(math.isnan(r["pressure_GPa"]) for r in rows)
    assert all(math.isfinite(r["etot_eV"]) for r in rows)


def test_a_linear_molecule_starts_without_numpy_warnings(tiny_model: Path) -> None:
    # ZeroRotation divides by the zero moment of a linear molecule: numpy's "invalid value
    # encountered in divide" leaked into every md run of a dimer
    import warnings

    atoms = molecule("CO")
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="mol")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rows = run_md(atoms, MDConfig(ensemble="nve", steps=2, log_every=1), progress=False)
    assert np.isfinite(atoms.get_velocities()).all() and rows[0]["temperature_K"] > 0


def test_an_appended_run_continues_the_uninterrupted_one(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a restart from the trajectory's last frame began its time at 0 again and replaced the
    # trajectory: --append continues both, and NVE from the saved momenta is the same run
    start = tmp_path / "start.extxyz"
    ase.io.write(start, alloy(0))
    common = ["--head", "emt", "--ensemble", "nve", "--log-every", "5", "--no-progress"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir()
    part.mkdir()
    outputs = ["--traj", str(whole / "md.traj"), "--log", str(whole / "md.log")]
    assert main(["md", str(tiny_model), str(start), "--steps", "20", *common, *outputs]) == 0
    traj, log = part / "md.traj", part / "md.log"
    assert main(["md", str(tiny_model), str(start), "--steps", "10", *common,
                 "--traj", str(traj), "--log", str(log)]) == 0  # fmt: skip
    assert main(["md", str(tiny_model), str(traj), "--index", "-1", "--append",
                 "--initial-temperature", "0", "--steps", "10", *common,
                 "--traj", str(traj), "--log", str(log)]) == 0  # fmt: skip
    capsys.readouterr()
    rows = [np.loadtxt(folder / "md.log") for folder in (whole, part)]
    assert rows[0].shape == rows[1].shape == (5, rows[0].shape[1])  # steps 0, 5, ..., 20
    np.testing.assert_allclose(rows[1][:, 0], [0.0, 0.005, 0.01, 0.015, 0.02])  # time, ps
    np.testing.assert_allclose(rows[1], rows[0], rtol=1e-6, atol=1e-8)
    frames = [ase.io.read(folder / "md.traj", index=":") for folder in (whole, part)]
    assert len(frames[0]) == len(frames[1]) == 5
    np.testing.assert_allclose(frames[1][-1].positions, frames[0][-1].positions, atol=1e-9)
    assert (log.read_text().count("#")) == 1  # one header


def test_md_does_not_replace_an_earlier_run_unasked(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`md` run twice in one folder replaced the first run's md.log and md.traj without a
    word, and a trajectory that could not be opened emptied the log before failing."""
    start = tmp_path / "start.extxyz"
    ase.io.write(start, alloy(0))
    log, traj = tmp_path / "md.log", tmp_path / "md.traj"
    args = ["md", str(tiny_model), str(start), "--head", "emt", "--steps", "2", "--no-progress"]
    outputs = ["--log", str(log), "--traj", str(traj)]
    assert main([*args, *outputs]) == 0
    before = log.read_bytes(), traj.read_bytes()
    capsys.readouterr()
    assert main([*args, *outputs]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{log}: exists (an earlier run's --log?)" in err[0], err
    assert (log.read_bytes(), traj.read_bytes()) == before
    assert main([*args, *outputs, "--overwrite"]) == 0
    capsys.readouterr()
    text = log.read_text()  # replaced whole: one header, then the new run's rows
    assert text.startswith("# time_ps") and text.count("#") == 1 and len(text.splitlines()) == 3
    # a trajectory that cannot be opened (/proc/x.traj passed the folder check as root)
    # leaves the log as it was
    kept = log.read_bytes()

    def unopenable(path: Path, *, append: bool = False) -> None:
        raise DataError("cannot write it (No such file or directory)", file=str(path))

    monkeypatch.setattr(dynamics, "_trajectory_writer", unopenable)
    atoms = alloy(0)
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    with pytest.raises(DataError, match="cannot write it"):
        run_md(atoms, MDConfig(steps=2), log=log, trajectory=traj, progress=False)
    assert log.read_bytes() == kept


def test_append_continues_only_from_the_trajectorys_last_frame(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`md --append` from the first run's start replayed its frames as a continuation, an
    unrelated structure was appended under the same time axis, and without
    --initial-temperature 0 the velocities were drawn again (the NVE energy jumped)."""
    start = tmp_path / "start.extxyz"
    ase.io.write(start, alloy(0))
    other = tmp_path / "other.extxyz"
    ase.io.write(other, alloy(1)[:3])  # another structure of the head's elements
    log, traj = tmp_path / "md.log", tmp_path / "md.traj"
    common = ["--head", "emt", "--ensemble", "nve", "--steps", "6", "--log-every", "2",
              "--no-progress", "--log", str(log), "--traj", str(traj)]  # fmt: skip
    assert main(["md", str(tiny_model), str(start), *common]) == 0
    before = log.read_bytes(), traj.read_bytes()
    capsys.readouterr()
    for wrong in (start, other):
        assert main(["md", str(tiny_model), str(wrong), *common, "--append"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--append continues this trajectory from its last" in err[0]
        assert (log.read_bytes(), traj.read_bytes()) == before
    # the documented continuation: the last frame, its velocities kept by default
    assert main(["md", str(tiny_model), str(traj), "--index", "-1", *common, "--append"]) == 0
    rows = np.loadtxt(log)
    etot = rows[:, 3]  # time, epot, ekin, etot, ...: conserved across the two pieces
    assert abs(etot[4] - etot[3]) < 1e-3 * abs(etot[3]) + 1e-3
    assert np.all(np.diff(rows[:, 0]) > 0)  # time goes on


def test_velocities_that_are_not_finite_are_the_inputs_fault(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NaN momenta in the input were reported as a timestep too long for the atoms."""
    atoms = alloy(0)
    momenta = np.zeros((len(atoms), 3))
    momenta[2, 1] = np.nan
    atoms.set_momenta(momenta)
    start = tmp_path / "nan.extxyz"
    ase.io.write(start, atoms)
    args = ["md", str(tiny_model), str(start), "--head", "emt", "--steps", "2", "--no-progress",
            "--initial-temperature", "0", "--log", str(tmp_path / "x.log")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{start}, record -1, field 'momenta'" in err[0], err
    assert "atom 2" in err[0] and "timestep" not in err[0]


def test_relax_counts_its_starts_short_contacts(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`relax` from a start shorter than training said left_training_data [] and
    "converged" without its closing warning: the CLI's check of the start had computed (and
    warned about) the start before the relaxation counted; from Python, a start computed
    before relax() was missed the same way."""
    from ase.build import bulk

    squeezed = bulk("Cu", "fcc", a=3.0, cubic=True)
    start = tmp_path / "squeezed.extxyz"
    ase.io.write(start, squeezed)
    assert main(["relax", str(tiny_model), str(start), "--head", "emt", "--steps", "0",
                 "--no-progress", "--out", str(tmp_path / "out.extxyz")]) in (0, 1)  # fmt: skip
    captured = capsys.readouterr()
    assert '"left_training_data": [\n' in captured.out
    assert "the relaxation reached 1 kind(s) of contact shorter" in captured.err
    squeezed.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    squeezed.get_forces()  # computed (and warned about) before relax()
    assert relax(squeezed, RelaxConfig(steps=0), progress=False).left_training_data


def test_ctrl_c_in_md_says_what_the_files_kept_and_the_run_goes_on_from_there(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C at step 7 of a run logged every 5 steps: one line naming the files and the last
    step they hold (5), exit 130, and `--append` from the trajectory continues at 5."""
    start = tmp_path / "start.extxyz"
    ase.io.write(start, alloy(0))
    log, traj = tmp_path / "md.log", tmp_path / "md.traj"
    common = ["--head", "emt", "--ensemble", "nve", "--log-every", "5", "--no-progress"]
    outputs = ["--log", str(log), "--traj", str(traj)]
    build = dynamics.make_dynamics

    def ctrl_c_at_step_7(*args: object, **kwargs: object) -> object:
        dyn = build(*args, **kwargs)  # type: ignore[arg-type]

        def press() -> None:
            if dyn.nsteps == 7:
                raise KeyboardInterrupt

        dyn.attach(press, interval=1)
        return dyn

    monkeypatch.setattr(dynamics, "make_dynamics", ctrl_c_at_step_7)
    first = tmp_path / "first.log"
    # still a KeyboardInterrupt, for a caller's `except` to catch; without a trajectory there
    # is no frame to go on from
    atoms = alloy(0)
    atoms.calc = MatscaleCalculator.from_file(tiny_model, head="emt")
    with pytest.raises(KeyboardInterrupt, match=rf"step 7; {first} holds its steps up to 5$"):
        run_md(atoms, MDConfig(steps=20, log_every=5), log=first, progress=False)
    assert console.main(["md", str(tiny_model), str(start), "--steps", "20", *common,
                         *outputs]) == 130  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"matscale: MD interrupted at step 7; {log} and {traj} hold its steps up to 5: to go "
        f"on, give {traj} as the structure, with --append"
    ]
    assert len(ase.io.read(traj, index=":")) == 2 and len(np.loadtxt(log)) == 2  # steps 0, 5
    monkeypatch.setattr(dynamics, "make_dynamics", build)
    assert main(["md", str(tiny_model), str(traj), "--append", "--steps", "5", *common,
                 *outputs]) == 0  # fmt: skip
    np.testing.assert_allclose(np.loadtxt(log)[:, 0], [0.0, 0.005, 0.01])  # time, ps


def test_ctrl_c_in_relax_says_where_it_stood_and_what_the_trajectory_holds(
    tiny_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ase.optimize

    start, traj, out = tmp_path / "start.extxyz", tmp_path / "relax.traj", tmp_path / "out.xyz"
    ase.io.write(start, alloy(3))
    step = ase.optimize.FIRE.step

    def ctrl_c_at_step_3(self: ase.optimize.FIRE, *args: object, **kwargs: object) -> None:
        if self.nsteps == 3:
            raise KeyboardInterrupt
        step(self, *args, **kwargs)

    monkeypatch.setattr(ase.optimize.FIRE, "step", ctrl_c_at_step_3)
    args = [
        "relax",
        str(tiny_model),
        str(start),
        "--head",
        "emt",
        "--fmax",
        "1e-4",
        "--no-progress",
    ]
    assert console.main([*args, "--traj", str(traj), "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()  # warnings of short contacts first
    assert err[-1] == (
        f"matscale: relaxation interrupted at step 3; {traj} holds its steps so far: to go on, "
        "relax its last frame (--index -1)"
    )
    assert len(ase.io.read(traj, index=":")) == 4 and not out.exists()  # the start, steps 1-3
