"""The verbs of the CLI that use a trained model: ``matscale eval``, ``md``, ``relax``. Each
parses its arguments and calls the calc package."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matscale.data.readers import add_reader_args, parse_reader_options
from matscale.errors import DataError
from matscale.helpformat import DefaultsHelp

if TYPE_CHECKING:  # the verbs import their modules when run: `matscale --help` stays fast
    from ase import Atoms

    from matscale.calc.inference import Result
    from matscale.data.structure import Structure


def add_verbs(verbs: Any) -> None:
    """Register ``eval``, ``predict``, ``md`` and ``relax`` on the CLI's subparsers."""
    fmt = DefaultsHelp
    ev = verbs.add_parser(
        "eval", help="score a model on labelled structures (files or stores)", formatter_class=fmt
    )
    _model_args(ev)
    ev.add_argument(
        "data", nargs="+", type=Path, help="files, folders (searched as `data pack` does), stores"
    )
    ev.add_argument("--out", type=Path, default=None, help="folder for summary.json and plots")
    ev.add_argument("--max-atoms", type=int, default=1024, help="atoms per batch")
    add_reader_args(ev)
    ev.set_defaults(run=_eval)

    pr = verbs.add_parser(
        "predict",
        help="the model's energies, forces and stress of structures (files, folders, stores), "
        "written as extended XYZ",
        formatter_class=fmt,
    )
    _model_args(pr)
    pr.add_argument(
        "data", nargs="+", type=Path, help="files, folders (searched as `data pack` does), stores"
    )
    pr.add_argument(
        "--out",
        type=Path,
        required=True,
        help="extxyz file: each structure with the model's energy (eV), forces (eV/Å), stress "
        "(eV/Å³, cells periodic in 3D) and per-atom energies (eV)",
    )
    pr.add_argument("--max-atoms", type=int, default=1024, help="atoms per batch")
    add_reader_args(pr)
    pr.set_defaults(run=_predict)

    md = verbs.add_parser(
        "md", help="molecular dynamics with ASE's integrators", formatter_class=fmt
    )
    _model_args(md)
    _structure_args(md)
    md.add_argument(
        "--ensemble",
        choices=["nve", "nvt", "npt"],
        default="nvt",
        help="velocity Verlet, Langevin, or isotropic MTK barostat",
    )
    md.add_argument("--timestep", type=float, default=1.0, help="fs")
    md.add_argument("--temperature", type=float, default=300.0, help="K")
    md.add_argument(
        "--initial-temperature",
        type=float,
        default=None,
        help="K of the initial velocities (default: --temperature, or with --append the "
        "frame's own; 0 keeps the file's)",
    )
    md.add_argument("--steps", type=int, default=1000, help="time steps")
    md.add_argument(
        "--friction", type=float, default=None, help="Langevin friction, 1/fs (nvt; 0.01)"
    )
    md.add_argument("--pressure", type=float, default=None, help="NPT pressure, GPa (npt; 0)")
    md.add_argument("--log-every", type=int, default=10, help="steps between log rows/frames")
    md.add_argument("--seed", type=int, default=0, help="of velocities and Langevin noise")
    md.add_argument("--traj", type=Path, default=Path("md.traj"), help="trajectory file")
    md.add_argument(
        "--log",
        "--log-file",  # the name to give under torchrun, whose argparse takes --log for its own
        dest="log",
        type=Path,
        default=Path("md.log"),
        help="energy/T/P log (--log-file under torchrun: --domains)",
    )
    md.add_argument(
        "--append",
        action="store_true",
        help="continue an earlier run from its trajectory's last frame and velocities: append "
        "to --traj and --log, the time going on from the log's last row (md md.traj --index -1 "
        "--append)",
    )
    md.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --log and --traj (without it, or --append, they are refused)",
    )
    md.add_argument(
        "--domains",
        action="store_true",
        help="spread each force call over the processes of a torchrun/srun launch by spatial "
        "domains (one large system); rank 0 writes the log and trajectory",
    )
    md.set_defaults(run=_md)

    rx = verbs.add_parser(
        "relax", help="relax positions (and the cell) with ASE's optimizers", formatter_class=fmt
    )
    _model_args(rx)
    _structure_args(rx)
    rx.add_argument(
        "--optimizer", choices=["fire", "bfgs", "lbfgs"], default="fire", help="ASE's optimizer"
    )
    rx.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    rx.add_argument("--steps", type=int, default=500, help="most optimizer steps")
    rx.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    rx.add_argument("--pressure", type=float, default=0.0, help="GPa, with --cell")
    rx.add_argument("--out", type=Path, default=None, help="relaxed structure file (none: printed)")
    rx.add_argument("--traj", type=Path, default=None, help="trajectory of the relaxation")
    rx.set_defaults(run=_relax)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file (model.pt) or a shipped model's name")
    p.add_argument(
        "--head",
        default=None,
        help="level of theory (head name); default: the model's default head (shipped models) "
        "or its only one",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the model through torch.compile, forces written out (~2x faster on "
        "thousands of atoms; the first call compiles, seconds to a minute)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _structure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("structure", type=Path, help="any file ASE reads (extxyz, POSCAR, cif, ...)")
    p.add_argument("--index", default="-1", help="frame of the file; -1 is the last")


def _read_structure(path: Path, index: str) -> Any:
    import ase.io

    if path.is_dir():
        raise DataError("is a folder, not a structure file", file=str(path))
    if not path.is_file():
        raise DataError("no such file", file=str(path))
    if not index.lstrip("-").isdigit():
        raise DataError(
            f"--index must be a frame number (0 the first, -1 the last), got {index!r}",
            file=str(path),
        )
    which = int(index)
    if which < -1:  # ASE reads frame 0 for a negative index past the start: count them
        frames = _count_frames(path)
        if frames is not None and which < -frames:
            raise DataError(
                f"--index {which} is out of range: the file has {frames} frame(s)",
                file=str(path),
                record=which,
            )
    try:
        atoms = ase.io.read(path, index=which)
    except Exception as exc:  # ASE raises many kinds for a file it cannot parse
        frames = _count_frames(path)
        if frames is not None and not -frames <= which < frames:
            raise DataError(
                f"--index {which} is out of range: the file has {frames} frame(s)",
                file=str(path),
                record=which,
            ) from None
        raise DataError(
            f"ASE cannot read it ({type(exc).__name__}: {exc})", file=str(path)
        ) from None
    if len(atoms) == 0:
        raise DataError("structure has no atoms", file=str(path))
    return atoms


def _check_distinct(inputs: list[Path], **outputs: Path | None) -> None:
    """Refuse an output (``--log``, ``--traj``, ``--out``) that is an input's file or another
    output's: writing it would destroy what the run reads or writes (a relaxation written
    over a 4-frame input left 1 frame)."""
    several = len(inputs) > 1
    taken = {f"the input {p}" if several else "the input structure": p.resolve() for p in inputs}
    for flag, path in outputs.items():
        if path is None:
            continue
        resolved = path.resolve()
        for what, other in taken.items():
            if resolved == other:
                raise DataError(
                    f"--{flag} is {what}'s file: writing it would overwrite that; give "
                    "another path",
                    file=str(path),
                )
        taken[f"--{flag}"] = resolved


def _check_data_inputs(inputs: list[Path], out: Path | None) -> None:
    """Refuse inputs of ``eval``/``predict`` that would be read twice (a path given twice, a
    file or folder inside a folder also given: each of its structures would count twice in
    every error), and an ``out`` inside an input folder (searched for structures: eval's
    summary.json there made the folder unreadable to the next eval)."""
    seen: dict[Path, Path] = {}
    for path in inputs:
        resolved = path.resolve()
        if resolved in seen:
            raise DataError("given twice: each of its structures would count twice", file=str(path))
        seen[resolved] = path
    folders = [(r, p) for r, p in seen.items() if p.is_dir()]
    for resolved, path in seen.items():
        for folder, given in folders:
            if resolved != folder and resolved.is_relative_to(folder):
                raise DataError(
                    f"lies in the folder {given}, also given, which is searched for structures: "
                    "each of its structures would count twice; give one of them",
                    file=str(path),
                )
    if out is None:
        return
    for folder, given in folders:
        if out.resolve().is_relative_to(folder):
            raise DataError(
                f"--out lies in the input folder {given}, which is searched for structures: "
                "a file there would be read (or overwritten); write it elsewhere",
                file=str(out),
            )


def _note_default_head(potential: Any, without: dict[str, int]) -> None:
    """Say on stderr that structures of the sources ``without`` (counts), which name no head
    of ``potential``, were read by its default head."""
    import sys

    from matscale.pretrained import default_head

    print(
        f"note: {sum(without.values()):,} structures come from source(s) "
        f"{', '.join(repr(s) for s in without)}, which name no head of this model: read by "
        f"its default head {default_head(potential)!r}, whose level of theory may not be "
        f"theirs. Give --head (the heads: {', '.join(potential.heads)}) or pack them under a "
        "head's source name",
        file=sys.stderr,
    )


@contextmanager
def _naming(path: Path, index: str) -> Iterator[None]:
    """A :class:`DataError` about the structure (its elements, geometry, periodicity) raised
    inside, re-raised naming its file and frame (errors that name a file already pass)."""
    try:
        yield
    except DataError as exc:
        if exc.file is not None:
            raise
        raise DataError(
            exc.reason, file=str(path), record=int(index), field=exc.field, kind=exc.kind
        ) from None


def _check_input(atoms: Any, path: Path, index: str) -> None:
    """The model's checks of the structure (elements, geometry), run now by its first forces
    (kept by ASE for the run's first step), an error naming the file and frame."""
    with _naming(path, index):
        atoms.get_forces()


def _count_frames(path: Path) -> int | None:
    import ase.io

    try:
        return len(ase.io.read(path, index=":"))
    except Exception:  # the file cannot be read whole: say nothing about its length
        return None


def _calculator(args: argparse.Namespace, *, needs_stress: str = "") -> Any:
    """The calculator of ``args.model``; ``needs_stress`` names what needs stress (an error
    for a direct-force model)."""
    from matscale.calc.ase_calculator import MatscaleCalculator
    from matscale.pretrained import model_file

    calc = MatscaleCalculator.from_file(
        model_file(args.model),
        head=args.head,
        device=args.device,
        compile=args.compile,
        domains=getattr(args, "domains", False),
    )
    if needs_stress:
        calc.potential.require_stress(needs_stress)
    return calc


def _eval(args: argparse.Namespace) -> int:
    import sys

    from matscale.calc.evaluation import evaluate_files, format_table
    from matscale.calc.model_file import load_potential
    from matscale.data.store import META
    from matscale.pretrained import model_file

    if args.out is not None:  # a folder eval makes; where it goes must exist, before any work
        from matscale.calc.dynamics import check_output_path

        if args.out.exists() and not args.out.is_dir():
            raise DataError(
                "is a file: --out names the folder that gets summary.json, structures.csv and "
                "the plots",
                file=str(args.out),
            )
        check_output_path(args.out)
    _check_data_inputs(args.data, args.out)
    reader_options = parse_reader_options(args.reader_option)
    potential = load_potential(model_file(args.model), device=args.device, compile=args.compile)
    if any((p / META).is_file() for p in args.data):
        print(
            "note: a store holds every split, training included; for errors on structures the "
            "model never saw, give it files it was not trained on",
            file=sys.stderr,
        )
    metrics = evaluate_files(
        potential,
        args.data,
        args.out,
        head=args.head,
        max_atoms=args.max_atoms,
        progress=not args.no_progress,
        format=args.format,
        reader_options=reader_options,
    )
    print(format_table(metrics))
    used = metrics["heads_used"]
    print("read by head" + ("s " if len(used) > 1 else " ")
          + ", ".join(f"{h} ({n:,} structures)" for h, n in used.items()))  # fmt: skip
    if without := metrics.get("sources_without_a_head"):
        _note_default_head(potential, without)
    if unscored := metrics.get("unscored_structures"):
        print(
            f"note: {unscored:,} of the {metrics['structures']:,} structures carry no label "
            "eval can score (energy, forces, or stress of a periodic cell): predicted, in no "
            "error",
            file=sys.stderr,
        )
    if made := metrics.get("labels_made_by_models"):
        n = sum(made.values())
        print(
            f"note: {n:,} of the {metrics['structures']:,} structures carry labels a model made "
            f"({'; '.join(made)}), not a reference calculation: their errors measure agreement "
            "with that model",
            file=sys.stderr,
        )
    if args.out is not None:
        print(f"summary.json, structures.csv and plots in {args.out}")
    return 0


#: Structures predicted and written per round: memory holds one round, whatever the input.
PREDICT_CHUNK = 256


def _predict(args: argparse.Namespace) -> int:
    import os
    from itertools import islice

    import ase.io

    from matscale.calc.dynamics import check_output_path
    from matscale.calc.evaluation import read_inputs
    from matscale.calc.inference import head_for, labeller, predict
    from matscale.calc.model_file import load_potential
    from matscale.pretrained import model_file
    from matscale.progress import progress_bar

    if args.out.suffix != ".extxyz":
        raise DataError(
            "predictions are written as extended XYZ: give --out a .extxyz name",
            file=str(args.out),
        )
    _check_distinct(args.data, out=args.out)
    _check_data_inputs(args.data, args.out)
    reader_options = parse_reader_options(args.reader_option)
    check_output_path(args.out)
    potential = load_potential(model_file(args.model), device=args.device, compile=args.compile)
    # written beside --out and moved over it at the end: a run that fails loses nothing
    partial = args.out.with_name(args.out.name + ".partial")
    count = with_stress = 0
    defaulted: dict[str, int] = {}  # structures whose source names no head, by source
    bar = progress_bar(desc="predicting", unit=" structures", enabled=not args.no_progress)
    try:
        with open(partial, "w") as fh:
            structures = read_inputs(args.data, format=args.format, reader_options=reader_options)
            while chunk := list(islice(structures, PREDICT_CHUNK)):
                results = predict(potential, chunk, head=args.head, max_atoms=args.max_atoms)
                frames = []
                for s, r in zip(chunk, results, strict=True):
                    head = potential.graph.heads[head_for(potential, s, args.head)]
                    frames.append(_predicted_frame(s, r, labeller(potential, head)))
                    if args.head is None and len(potential.heads) > 1 and s.source != head:
                        defaulted[s.source] = defaulted.get(s.source, 0) + 1
                ase.io.write(fh, frames, format="extxyz")
                count += len(chunk)
                with_stress += sum("stress" in r for r in results)
                bar.update(len(chunk))
        if count == 0:
            raise DataError("no structures to predict", file=", ".join(map(str, args.data)))
        os.replace(partial, args.out)
    finally:
        bar.close()  # a failed run's error line starts on a line of its own
        partial.unlink(missing_ok=True)
    print(
        f"{count:,} structures with the model's energy and forces, {with_stress:,} of them with "
        f"stress (cells periodic in x, y and z, conservative model): {args.out}"
    )
    if defaulted:
        _note_default_head(potential, dict(sorted(defaulted.items())))
    return 0


def _predicted_frame(s: Structure, result: Result, labelled_by: str) -> Atoms:
    """``s`` as ``ase.Atoms`` carrying ``result`` (the model's numbers, not the input's
    labels) and, in ``labelled_by``, the model and head that made them."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
    atoms.info["labelled_by"] = labelled_by
    # only what is there: an empty value would garble the extxyz comment line
    for name in ("source", "family", "key"):  # key: the input's file#record
        if getattr(s, name):
            atoms.info[name] = getattr(s, name)
    atoms.calc = SinglePointCalculator(atoms, **result)
    return atoms


def _md(args: argparse.Namespace) -> int:
    from matscale.parallel.distributed import Dist, finish, init_distributed

    # under --domains every process runs this same MD; the forces (all-reduced) and so the
    # trajectories are identical on all of them, and rank 0 writes
    d = init_distributed("gloo") if args.domains else Dist()
    if args.domains:  # each process on its own device: NCCL with one GPU per process, or gloo
        args.device = str(d.device)
    try:
        return _run_md(args, d)
    except BaseException:
        finish(failed=True)  # leave at once: the peers' collectives fail instead of waiting
        raise


def _run_md(args: argparse.Namespace, d: Any) -> int:
    import math
    import sys

    from matscale.calc.dynamics import (
        MDConfig,
        check_outputs,
        energy_drift,
        nve_warning,
        run_md,
    )
    from matscale.parallel.distributed import finish

    # an option of another ensemble would be ignored: say so before any work
    for option, value, ensemble in (("friction", args.friction, "nvt"),
                                    ("pressure", args.pressure, "npt")):  # fmt: skip
        if value is not None and args.ensemble != ensemble:
            raise DataError(
                f"--{option} is for --ensemble {ensemble}; this run is {args.ensemble}",
                field=option,
            )
    atoms = _read_structure(args.structure, args.index)
    atoms.calc = _calculator(args, needs_stress="NPT" if args.ensemble == "npt" else "")
    if not atoms.calc.potential.conservative:
        print(
            "warning: this model's forces come from a direct head, not −∂E/∂x: the total "
            "energy is not conserved (NVE drifts; benchmarks/md_drift.py)",
            file=sys.stderr,
        )
    cfg = MDConfig(
        ensemble=args.ensemble,
        timestep_fs=args.timestep,
        steps=args.steps,
        temperature_K=args.temperature,
        initial_temperature_K=args.initial_temperature,
        friction_per_fs=MDConfig.friction_per_fs if args.friction is None else args.friction,
        pressure_GPa=MDConfig.pressure_GPa if args.pressure is None else args.pressure,
        log_every=args.log_every,
        seed=args.seed,
    )
    if args.append and args.overwrite:
        raise DataError("--append continues the log and trajectory, --overwrite replaces them: "
                        "give one", field="append")  # fmt: skip
    log, trajectory = (args.log, args.traj) if d.main else (None, None)
    if args.append and args.initial_temperature:
        print(
            f"note: --append with --initial-temperature {args.initial_temperature:g} draws new "
            "velocities: the continuation starts from the last frame's positions only",
            file=sys.stderr,
        )
    # appending, the input may be the trajectory itself: its frame is read before any write
    same = (
        args.append and trajectory is not None and trajectory.resolve() == args.structure.resolve()
    )
    _check_distinct([args.structure], log=log, traj=None if same else trajectory)
    if not (args.append or args.overwrite):  # a long run's records are not replaced unasked
        for flag, path in (("log", log), ("traj", trajectory)):
            if path is not None and path.is_file() and path.stat().st_size > 0:
                raise DataError(
                    f"exists (an earlier run's --{flag}?): --append continues it, --overwrite "
                    "replaces it; or give another path",
                    file=str(path),
                )
    check_outputs(log, trajectory)  # the settings and paths first: they cost nothing
    _check_input(atoms, args.structure, args.index)
    with _naming(args.structure, args.index):  # NPT on a slab, say
        rows = run_md(
            atoms,
            cfg,
            log=log,
            trajectory=trajectory,
            progress=not args.no_progress and d.main,
            append=args.append,
        )
    finish()
    if not d.main:
        return 0
    last = rows[-1]
    temps = [r["temperature_K"] for r in rows[len(rows) // 2 :]]
    print(
        f"{cfg.steps} steps of {cfg.timestep_fs:g} fs ({cfg.steps * cfg.timestep_fs / 1000:g} ps), "
        f"{len(atoms)} atoms, {cfg.ensemble}: final T {last['temperature_K']:.1f} K, "
        f"mean T over the second half {sum(temps) / len(temps):.1f} K"
    )
    if cfg.ensemble == "nve":
        drift = energy_drift(rows, len(atoms))
        if math.isfinite(drift):  # a run of one log row has no slope
            print(f"total energy drift {drift:+.3f} meV/atom/ps")
        # a direct head never conserves energy, and was warned of above
        warning = atoms.calc.potential.conservative and nve_warning(
            rows, len(atoms), cfg.timestep_fs
        )
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    print(f"log: {args.log}; trajectory: {args.traj}")
    return 0


def _relax(args: argparse.Namespace) -> int:
    import sys

    import ase.io

    from matscale.calc.dynamics import (
        RelaxConfig,
        check_output_format,
        check_output_path,
        relax,
    )

    _check_distinct([args.structure], out=args.out, traj=args.traj)
    if args.out is not None:  # before the relaxation, not after it
        check_output_path(args.out)
        check_output_format(args.out)
    atoms = _read_structure(args.structure, args.index)
    atoms.calc = _calculator(args, needs_stress="cell relaxation" if args.cell else "")
    cfg = RelaxConfig(
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        cell=args.cell,
        pressure_GPa=args.pressure,
    )
    # the start's checks (elements, geometry) are relax's first forces, inside _naming: there
    # its short contacts are counted in the result's left_training_data too
    with _naming(args.structure, args.index):  # a cell relaxation of a slab, say
        result = relax(atoms, cfg, trajectory=args.traj, progress=not args.no_progress)
    print(json.dumps(asdict(result), indent=2), file=sys.stderr if args.out is None else sys.stdout)
    if args.out is not None:
        ase.io.write(args.out, atoms)
        print(f"relaxed structure: {args.out}")
    else:
        ase.io.write(sys.stdout, atoms, format="extxyz")
    if result.left_training_data:
        print(
            f"matscale: warning: the relaxation reached {len(result.left_training_data)} kind(s) "
            "of contact shorter than any in the head's training data: its end point is the "
            "model's extrapolation, converged or not (left_training_data above)",
            file=sys.stderr,
        )
    if not result.converged:
        print(
            f"matscale: not converged in {cfg.steps} steps (largest force "
            f"{result.max_force_eV_per_A:.3f} eV/Å > {cfg.fmax} eV/Å)",
            file=sys.stderr,
        )
        return 1
    return 0
