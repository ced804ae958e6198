"""Errors meant for the user: one sentence, no traceback, exit code 2."""


class UserError(ValueError):
    """Bad input (recipe, path, option). The CLI prints the message alone and exits with code 2.

    A ValueError, so pydantic validators that look names up in a registry report it like any other
    field error (with the file and line).
    """

    exit_code = 2


def exit_with(message: str, code: int = 2):
    """A command's one-line error: ``error: message`` on stderr, exit ``code``."""
    import typer

    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def notice(message: str) -> None:
    """A one-line note on stderr that does not stop anything (a fallback taken, a state not carried over)."""
    import sys

    print(f"sage: {message}", file=sys.stderr, flush=True)


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the run is marked FAILED."""

    def __init__(self, step: int, value: float):
        super().__init__(f"loss became {value} at step {step}; the run was stopped and marked FAILED")
        self.step = step
        self.value = value


class Preempted(Exception):
    """The scheduler asked the job to stop (preemption or time-out): the job resumes from the checkpoint of
    ``step`` (-1: the initial state), saved before this was raised."""

    def __init__(self, step: int):
        super().__init__(f"preempted; the checkpoint of step {step} is saved, to resume from")
        self.step = step


class Pruned(Exception):
    """A random search's draw fell behind its peers at a checkpoint (``search/prune.py``): the run stops there and
    is recorded FINISHED with the tag ``sage.pruned``, so that no sweep runs it again and no selection picks it."""

    def __init__(self, step: int, reason: str):
        super().__init__(f"pruned at step {step}: {reason}")
        self.step, self.reason = step, reason


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM obeyed once the MLflow run existed: the run is marked KILLED, its checkpoint kept. A
    plain KeyboardInterrupt from ``sage run`` came before any run existed: nothing was recorded."""

    def __init__(self, run_id: str):
        super().__init__(run_id)
        self.run_id = run_id
