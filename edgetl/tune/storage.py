"""Where a study lives: SQLite for one process, a journal file for several on one machine, any RDB URL.

Resuming is Optuna's ``load_if_exists``; trials a killed process left RUNNING are marked failed here
(same machine: their process is gone; other machines: the RDB heartbeat's grace period).
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .config import TuneConfig

log = logging.getLogger(__name__)

JOURNAL_NAME, SQLITE_NAME = "journal.log", "study.db"
HEARTBEAT_S, GRACE_S = 60, 180


def storage_url(config: TuneConfig) -> str:
    """The storage URL a study uses (a journal file is written ``journal:PATH``)."""
    if config.storage:
        return config.storage
    study_dir = config.study_dir.resolve()
    journal, sqlite = study_dir / JOURNAL_NAME, study_dir / SQLITE_NAME
    if config.workers > 1 and sqlite.is_file() and not journal.is_file():
        raise ConfigError(f"{study_dir} holds a SQLite study ({SQLITE_NAME}), which is for one process: rerun with "
                          "--workers 1, or give --storage a server database (postgresql://...) for several workers")
    if journal.is_file() or config.workers > 1:
        return f"journal:{journal}"
    return f"sqlite:///{sqlite}"


def open_storage(url: str) -> Any:
    """An Optuna storage for ``url``; one that cannot be opened is a one-line :class:`ConfigError`."""
    import optuna

    try:
        if url.startswith("journal:"):
            path = Path(url[len("journal:"):])
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from optuna.storages.journal import JournalFileBackend, JournalStorage
            except ImportError:  # Optuna 3.x
                from optuna.storages import JournalFileStorage as JournalFileBackend, JournalStorage
            return JournalStorage(JournalFileBackend(str(path)))
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                                              engine_kwargs={"pool_pre_ping": True})
    except Exception as exc:  # sqlalchemy, a missing driver, a refused connection, a bad URL
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot open the study storage {redact(url)}: {first}") from None


def redact(url: str) -> str:
    """``url`` without a password (for messages and the saved config)."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url
    return url


def load_study(config: TuneConfig, url: str, *, sampler: Any, pruner: Any) -> Any:
    """Create the study or load it to resume (same name, same direction(s))."""
    import optuna

    storage = open_storage(url)
    kwargs = {"directions": ["maximize", "minimize"]} if config.multi_objective else {"direction": "maximize"}
    name = config.study_name or config.study_dir.resolve().name
    try:
        return optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                   load_if_exists=True, **kwargs)
    except ValueError as exc:  # an existing study with other directions
        raise ConfigError(f"study {name!r} in {redact(url)} cannot be resumed with --objective {config.objective}: "
                          f"{str(exc).splitlines()[0]}; use another --study-name or -o") from None
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot open the study storage {redact(url)}: {first}") from None


def claim(trial: Any) -> None:
    """Record which process runs ``trial`` (so a later run can tell it was killed)."""
    trial.set_user_attr("host", socket.gethostname())
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("process_start", process_start(os.getpid()))


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, as an identity a later process given the same pid cannot share: on Linux
    the kernel's start time in clock ticks since boot (``/proc/PID/stat``; exact, no wall clock involved:
    psutil's ``create_time`` adds the boot time in whole seconds, up to a second early, and moves with clock
    adjustments), elsewhere psutil's ``create_time`` to the microsecond. None when there is no such process."""
    import psutil

    try:
        return "ticks:" + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        pass
    try:
        return f"time:{psutil.Process(pid).create_time():.6f}"
    except (psutil.Error, ValueError):
        return None


def _alive(pid: int, attrs: dict[str, Any], started: Any) -> bool:
    """Whether process ``pid`` still runs the trial with user attributes ``attrs``, started at ``started``: a
    zombie (killed, not yet reaped) is dead, and so is a process with another start (it got the pid by reuse)."""
    import psutil

    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except (psutil.Error, ValueError):
        return False
    if attrs.get("process_start"):
        return process_start(pid) == attrs["process_start"]
    try:  # claimed by an edgetl that recorded no process start: the trial's own start, to a second
        return started is None or psutil.Process(pid).create_time() <= started.timestamp() + 1.0
    except (psutil.Error, ValueError):
        return False


def fail_stale_trials(study: Any) -> list[int]:
    """Mark RUNNING trials whose process on this machine is gone as FAIL (``stale``); return their numbers."""
    import optuna
    from optuna.trial import TrialState

    host, stale = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        pid = int(attrs.get("pid", -1))
        if attrs.get("host") != host or (pid != os.getpid() and _alive(pid, attrs, trial.datetime_start)):
            continue
        storage = study._storage
        try:
            storage.set_trial_user_attr(trial._trial_id, "stale", True)
            storage.set_trial_user_attr(trial._trial_id, "error", "its process was killed")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            stale.append(trial.number)
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished meanwhile
    if isinstance(study._storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)  # other machines' trials whose heartbeat stopped
    if stale:
        log.warning("trial(s) %s were left running by a killed process: marked failed (not counted)",
                    ", ".join(map(str, stale)))
    return stale
