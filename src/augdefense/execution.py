"""Running one job in this process: the job's entry point (``run_job``), which a rule's script
(``augdefense.runner``) and a child of the warm worker (``augdefense.forkserver``) both call.

A job is declared once, in its rule: the rule's named ``input:``, ``output:`` and ``params:`` (and
``threads``) are passed to the function's keyword arguments of the same names (a parameter annotated
with a dataclass, such as ``TrainingJob``, is built from the same names). A name the rule declares
that the function does not take, or the reverse, stops the job naming both.

Before the call, every input that a workflow job produced is checked against the sha256 that job
recorded in its sidecar (``<file>.prov.json``): a file changed or corrupted since it was written is
refused, by name; an input with no sidecar is named in the job's record as unverified. After the
call, each output gets its sidecar (``augdefense.provenance``), written from what Snakemake already
knows about the job, including the job itself (``JobSpec``), so ``python -m augdefense replay
<sidecar>`` can run the same call again by hand. Torch-free.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augdefense import kernels
from augdefense.errors import ArtifactError, AugdefenseError, ConfigError

# Named inputs that only make Snakemake rerun a rule when its package sources change.
CODE_INPUT = "code"


@dataclass
class JobSpec:
    """One job as its rule declares it: named inputs, outputs and params (file values are a path, a
    list of paths, or None for an empty input), threads, wildcards, and its log file."""

    rule: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    wildcards: dict[str, str] = field(default_factory=dict)
    log: str | None = None
    code: list[str] = field(default_factory=list)  # the rule's code inputs (hashed into the sidecar)

    @classmethod
    def from_snakemake(cls, snakemake) -> JobSpec:
        inputs = {name: _files(value) for name, value in snakemake.input.items()}
        return cls(
            rule=snakemake.rule,
            inputs={k: v for k, v in inputs.items() if k != CODE_INPUT},
            outputs={name: _files(value) for name, value in snakemake.output.items()},
            params=dict(snakemake.params.items()),
            threads=snakemake.threads,
            wildcards=dict(snakemake.wildcards.items()),
            log=snakemake.log[0] if snakemake.log else None,
            code=_as_list(inputs.get(CODE_INPUT)),
        )

    def values(self) -> dict[str, Any]:
        """Everything the function may take, by name."""
        return {**self.inputs, **self.outputs, **self.params, "threads": self.threads}

    def input_files(self) -> list[str]:
        return [f for value in self.inputs.values() for f in _as_list(value)] + self.code

    def output_files(self) -> list[str]:
        return [f for value in self.outputs.values() for f in _as_list(value)]


def _files(value) -> str | list[str] | None:
    if isinstance(value, str):
        return value
    items = [str(v) for v in value]
    return items or None


def _as_list(value) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def bind(function: Callable, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Keyword arguments for ``function`` from ``values`` by name; every value must be taken
    (``threads`` excepted: a job that runs no computation ignores it)."""
    hints = typing.get_type_hints(function)
    kwargs, used = {}, set()
    for name, parameter in inspect.signature(function).parameters.items():
        kind = hints.get(name)
        if dataclasses.is_dataclass(kind):
            fields = {f.name: f for f in dataclasses.fields(kind)}
            missing = [f for f, spec in fields.items() if f not in values and _required(spec)]
            if missing:
                raise ConfigError(f"{where}: {kind.__name__} needs {missing}, which the rule does not declare")
            taken = {f: values[f] for f in fields if f in values}
            kwargs[name] = kind(**taken)
            used |= set(taken)
        elif name in values:
            kwargs[name] = values[name]
            used.add(name)
        elif parameter.default is inspect.Parameter.empty:
            raise ConfigError(f"{where}: {function.__qualname__} needs '{name}', which the rule does not declare")
    unused = sorted(set(values) - used - {"threads"})
    if unused:
        raise ConfigError(f"{where}: the rule declares {unused}, which {function.__qualname__} does not take")
    return kwargs


def _required(field_: dataclasses.Field) -> bool:
    return field_.default is dataclasses.MISSING and field_.default_factory is dataclasses.MISSING


def verify_inputs(job: JobSpec) -> tuple[dict[str, str], list[str]]:
    """sha256 of each input, and the inputs no job recorded. A workflow artifact must still match
    what the job that wrote it recorded in its sidecar; an input without a sidecar (a file made by
    hand, or outside the workflow) is hashed but cannot be checked, so it is named for the record."""
    from augdefense.io import read_json, sha256
    from augdefense.provenance import recorded_digest, sidecar_path

    digests, unverified = {}, []
    for file in job.input_files():
        if not Path(file).is_file():
            raise ArtifactError(f"{file}: file not found")
        digests[file] = sha256(file)
        sidecar = sidecar_path(file)
        if not sidecar.is_file():
            if file not in job.code:  # package sources are checked by their sha256 alone
                unverified.append(file)
            continue
        outputs = read_json(sidecar).get("outputs", {})
        recorded = recorded_digest(outputs, file)
        if recorded is None:
            raise ArtifactError(
                f"{file}: its sidecar {sidecar} records no output of that name (it records {sorted(outputs)}): "
                "a file moved or copied without its sidecar? delete the sidecar, or rerun the job that writes it"
            )
        if recorded != digests[file]:
            raise ArtifactError(
                f"{file}: its sha256 differs from what the job that wrote it recorded in {sidecar} "
                "(changed or corrupted since): delete it and rerun the workflow to rebuild it"
            )
    if unverified:
        logging.getLogger("augdefense").warning(
            "inputs without a sidecar (not written by a workflow job; hashed, not verified): %s", unverified
        )
    return digests, unverified


def execute(job: JobSpec, function: Callable, startup: float | None = None) -> None:
    """Check the job's inputs, call ``function`` with its arguments, write each output's sidecar
    (with where the job's time went: ``augdefense.timing``; ``startup`` when this process did not
    start with the job)."""
    from augdefense import provenance, timing

    timing.reset()
    timing.record("startup", timing.process_age() if startup is None else startup)
    started = provenance.now()
    with timing.imports_timed():
        with timing.phase("verify_inputs"):
            input_digests, unverified = verify_inputs(job)
        with timing.phase("job"):
            function(**bind(function, job.values(), f"rule {job.rule}"))
    provenance.write_sidecars(
        job=dataclasses.asdict(job),
        function=f"{function.__module__}:{function.__qualname__}",
        inputs=input_digests,
        unverified_inputs=unverified,
        outputs=job.output_files(),
        started=started,
        timings=timing.recorded(),
        memory=timing.memory(),
    )
    logging.getLogger("augdefense").info("timings %s; memory %s", timing.recorded(), timing.memory())


def run_job(job: JobSpec, function: Callable, startup: float | None = None, forked: bool = False) -> None:
    """Run ``job`` in this process, the entry point of every job (a rule's script runs it when no warm
    worker takes the job, the worker's child when one does): output to its log, its kernels and
    thread pools pinned (``augdefense.kernels``), and a one-line error with exit status 2 for what
    a user can fix."""
    with _logging_to(job.log):
        if forked:
            logging.getLogger("augdefense").info("forked from the warm worker (pid %d)", os.getppid())
        kernels.apply(kernels.setting_of(job.params), job.threads)
        try:
            execute(job, function, startup)
        except AugdefenseError as exc:
            print(f"augdefense {job.rule}: error: {exc}", file=sys.stderr)
            sys.stderr.flush()
            raise SystemExit(2) from None


@contextmanager
def _logging_to(log_file: str | None) -> Iterator[None]:
    """Send this process's stdout and stderr (Python's and any library's) to the job's log."""
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        sys.stdout.flush()
        sys.stderr.flush()
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True
    )
    yield


def function_named(name: str) -> Callable:
    """``module:qualified.name`` -> the function."""
    module, _, path = name.partition(":")
    obj = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj
