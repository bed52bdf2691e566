"""Errors raised for a user's bad input: each names the file, the record and the field."""

from __future__ import annotations


class DataError(ValueError):
    """A data file or record that cannot be used.

    Parameters
    ----------
    message:
        What is wrong, in words.
    file:
        The file (or store directory) it came from.
    record:
        Index or key of the record inside the file, when known.
    field:
        The field at fault (``"forces"``, ``"cell"``, ...), when known.
    kind:
        A stable short code of the problem (``"nan"``, ``"too-close"``, ...), for counting
        skipped records by cause.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        record: int | str | None = None,
        field: str | None = None,
        kind: str | None = None,
    ) -> None:
        self.reason = message
        self.kind = kind
        self.file = file
        self.record = record
        self.field = field
        where = []
        if file is not None:
            where.append(str(file))
        if record is not None:
            where.append(f"record {record}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Keep file, record and field when the error crosses a process boundary (a packing or
        # generating worker raising it to the main process).
        return (_rebuild, (type(self), self.reason, self.file, self.record, self.field, self.kind))


def _rebuild(
    cls: type[DataError],
    reason: str,
    file: str | None,
    record: int | str | None,
    field: str | None,
    kind: str | None,
) -> DataError:
    return cls(reason, file=file, record=record, field=field, kind=kind)


class CorruptShardError(DataError):
    """A shard of the store whose bytes do not match the checksum recorded at packing time."""


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema (names the key)."""


class TrainingError(RuntimeError):
    """A run that cannot go on and says why and what to do: weights or losses that stopped
    being finite, a process of the run that failed. Nothing it would have written is kept."""


class SimulationError(RuntimeError):
    """A simulation (MD, relaxation) that cannot go on and says why: energies or velocities that
    stopped being finite. What it logged and wrote up to then is kept."""


class SimulationInterrupted(KeyboardInterrupt):
    """A simulation stopped by Ctrl-C, saying what its files kept and how to go on (a
    KeyboardInterrupt still: a caller's ``except KeyboardInterrupt`` catches it)."""


class RunInterrupted(Exception):
    """A run stopped on request (a signal) after writing the checkpoint it resumes from.

    Parameters
    ----------
    signal_name:
        The signal that asked for the stop (``"SIGTERM"``, ...).
    step:
        The step the checkpoint holds.
    checkpoint:
        Path of that checkpoint.
    """

    def __init__(self, signal_name: str, step: int, checkpoint: str) -> None:
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(
            f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} written: "
            "run the same command to resume"
        )


class ExtrapolationWarning(UserWarning):
    """A structure outside what a model's training data covered (e.g. a contact shorter than
    any in training): the prediction is an extrapolation, to be trusted less."""
