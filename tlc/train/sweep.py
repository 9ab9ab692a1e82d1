"""A sweep: a grid of runs shared out through an Optuna study, each run in its own process.

Workers (on one machine or many) open the same study — SQLite in the run directory by
default, any Optuna storage URL otherwise — and claim runs as trials. The first pass over
the grid comes from Optuna's GridSampler, which gives trial k the k-th grid point, so workers
starting together never collide; later passes (a worker died, an earlier invocation stopped)
enqueue the unfinished runs. A claim is checked after it is written: when two live trials
hold the same run, the one with the lower number keeps it and the other stands down. Live
trials send heartbeats; a trial whose worker died is failed by Optuna and its run taken over,
resuming from the run's last checkpoint.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tlc import forkserver
from tlc.config import SweepConfig, load_sweep, parse_sweep, sweep_to_dict
from tlc.errors import UserError
from tlc.io import atomic_write_text, is_complete, read_jsonl
from tlc.train.guard import WORKER_PID_ENV, held_by_another
from tlc.train.loop import check_run_dir, plan_run
from tlc.train.progress import MODE_ENV, progress_mode


def _seconds_from_env(name: str, default: int) -> int:
    """A whole number of seconds from the environment (for tests and fast clusters), else ``default``."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise UserError(f"{name}: expected a whole number of seconds >= 1, got {value!r}; unset it for {default}")
    return int(value)


# Override with TLC_HEARTBEAT_S, TLC_GRACE_S and TLC_POLL_S; every worker of a sweep must use the same values.
HEARTBEAT_S = _seconds_from_env("TLC_HEARTBEAT_S", 10)  # a live trial records a heartbeat this often
GRACE_S = _seconds_from_env("TLC_GRACE_S", 60)  # a trial silent for this long is declared dead and its run retried
POLL_S = _seconds_from_env("TLC_POLL_S", 5)  # how often an idle worker looks again while other workers finish


@dataclass
class RunOutcome:
    run_id: str
    status: str  # "trained", "skipped" (already complete), "failed", "elsewhere" (another worker has it),
    # "left out" (an iso-FLOP run its budget cannot train well: too few steps, or more tokens than the corpus)
    detail: str = ""
    heartbeat_failures: int = 0  # beats this worker could not record while training the run


def prepare_sweep_dir(sweep: SweepConfig, runs_root: Path) -> Path:
    """Create ``runs/<sweep>/`` with a resolved ``sweep.yaml``, or check that an existing one matches."""
    import yaml

    sweep_dir = Path(runs_root) / sweep.name
    check_run_dir(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    resolved = sweep_to_dict(sweep)
    path = sweep_dir / "sweep.yaml"
    if path.exists():
        old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        try:  # resolved again, so that a setting added since it was written compares as its default
            old = sweep_to_dict(parse_sweep(old, str(path)))
        except UserError:
            pass
        for key in ("shapes", "seeds", "train", "data"):
            if old.get(key) != resolved[key]:
                raise UserError(
                    f"SWEEP: {str(sweep_dir)!r} was made by a sweep with different {key!r}; "
                    "rename the sweep (name:) or use another --runs-dir"
                )
    atomic_write_text(path, yaml.safe_dump(resolved, sort_keys=False))
    return sweep_dir


def open_study(sweep: SweepConfig, sweep_dir: Path, storage_url: str | None, ids: list[str] | None = None):
    """The sweep's Optuna study over run ids ``ids`` (default: every run of the sweep) and its storage,
    with heartbeats so that a dead worker's run is retried."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # the worker loop asks and tells trials itself (not Study.optimize) and records heartbeats on purpose
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used", category=UserWarning)
    url = _with_installed_driver(storage_url) if storage_url else f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(5):  # workers starting together race to create the schema; the loser retries
        try:
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max(1, sweep.launch.retries)),
            )
            break
        except Exception as e:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
            racing = "IntegrityError" in type(e).__name__ + str(e) or "already exists" in str(e)  # SQLite: a table
            if attempt == 4 or not racing:
                raise UserError(f"--storage: cannot open {url!r}: {str(e).splitlines()[0]}") from None
            time.sleep(1 + attempt)
    ids = ids if ids is not None else [r.run_id for r in sweep.runs()]

    class SweepGridSampler(optuna.samplers.GridSampler):
        """GridSampler whose trials never stop the study: the worker loop decides when a sweep is done."""

        def after_trial(self, study, trial, state, values):
            pass

    sampler = SweepGridSampler({"run_id": ids}, seed=0)
    study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=sampler, load_if_exists=True)
    return study, storage


def _with_installed_driver(url: str) -> str:
    """Name the PostgreSQL driver that is installed: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3,
    while ``tlc[postgres]`` installs psycopg2. Other URLs pass through unchanged."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep:
        return url
    for module, dialect in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"{dialect}://{rest}"
    raise UserError("--storage: a postgresql:// URL needs a PostgreSQL driver; pip install 'tlc[postgres]' "
                    "(psycopg2-binary) or psycopg[binary]")


class _Heartbeat:
    """Records the trial's heartbeat in the study's storage until stopped.

    Optuna beats by itself only inside ``study.optimize``; a sweep asks and tells, so it beats here,
    through the storage's public heartbeat API. A beat that fails is logged with the run's name and
    counted (``failures``): the next beat retries, but past GRACE_S of them the run is declared dead
    and another worker takes it over, which the sweep summary should explain.
    """

    def __init__(self, storage, study_name: str, trial_number: int, run_id: str):
        study_id = storage.get_study_id_from_name(study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self.run_id = run_id
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(storage, trial_id), daemon=True)

    def _beat(self, storage, trial_id):
        while not self._stop.wait(HEARTBEAT_S):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as error:  # the storage's driver raises many kinds; each is logged and counted
                self.failures += 1
                first = (str(error).splitlines() or [""])[0][:200]
                print(f"{self.run_id}: heartbeat not recorded ({type(error).__name__}: {first}); "
                      f"{self.failures} missed so far, the run is retried elsewhere after {GRACE_S:g} s without one",
                      file=sys.stderr, flush=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _claims(study, run_ids: list[str]):
    """Per run: the numbers of live (RUNNING) trials holding it."""
    from optuna.trial import TrialState

    holders: dict[str, list[int]] = {r: [] for r in run_ids}
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        run_id = t.params.get("run_id")
        if run_id in holders:
            holders[run_id].append(t.number)
    return holders


def run_command(sweep_file: Path, run_id: str, run_dir: Path, nproc: int) -> list[str]:
    """The command that trains one run of the sweep in a fresh process (torchrun for several)."""
    train = ["-m", "tlc", "train", "--sweep", str(sweep_file), "--run-id", run_id, "--out", str(run_dir)]
    if nproc == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]


def _train_in_subprocess(cmd: list[str], log_path: Path) -> tuple[int, str]:
    """Run one training process, passing its stderr through (the progress bar) into a log; return code and tail.

    A lone trainer (``python -m tlc train``) is forked from this worker's fork server where that is safe
    (tlc.forkserver: it skips the 2.5-5 CPU-seconds of imports a fresh process pays per run).
    """
    tail: collections.deque[str] = collections.deque(maxlen=20)
    # the trainer dies with this worker (tlc.train.guard.exit_with_worker), so a killed worker's run is free to take over
    env = {**os.environ, "PYTHONUNBUFFERED": "1", WORKER_PID_ENV: str(os.getpid())}
    # the trainer's stderr is this pipe: it draws a bar only when this worker's own output is a terminal
    env.setdefault(MODE_ENV, progress_mode())
    read_end, write_end = os.pipe()
    try:
        if cmd[:3] == [sys.executable, "-m", "tlc"]:
            proc = forkserver.popen(cmd[3:], env=env, stderr=write_end)
        else:
            proc = subprocess.Popen(cmd, stderr=write_end, env=env)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # the trainer holds the only writing end: the pipe ends when it does
    buffer = b""
    with open(log_path, "ab") as log, open(read_end, "rb", buffering=0) as stream:
        while chunk := stream.read(4096):
            sys.stderr.buffer.write(chunk)
            sys.stderr.flush()
            log.write(chunk)
            buffer = (buffer + chunk)[-8192:]
    code = proc.wait()
    for line in buffer.decode("utf-8", "replace").replace("\r", "\n").splitlines():
        if line.strip():
            tail.append(line.strip())
    return code, tail[-1] if tail else ""


def run_sweep(sweep_path: Path, runs_root: Path = Path("runs"), storage: str | None = None,
              max_runs: int | None = None) -> list[RunOutcome]:
    """Train every run of a sweep that is not finished, sharing the work with any other worker."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    sweep = load_sweep(sweep_path)
    # refuses a budget smaller than one step before anything starts
    plans = [(run, plan_run(run, sweep.launch.nproc)) for run in sweep.runs()]
    available = prepare_data(sweep)
    left_out = dict(sweep.skipped())
    for run, plan in plans:
        # a law's D counts tokens seen once: a model that would see the corpus more than once is left out
        tokens, corpus = plan.final_steps * plan.tokens_per_step, available[run.shape.vocab_size]
        if tokens > corpus * sweep.data.max_epochs:
            spent = f"at {run.budget:.3g} FLOPs" if run.budget is not None else "for its longest model"
            field = "train.budgets" if run.budget is not None else "train.tokens"
            times = "" if sweep.data.max_epochs == 1 else f" x data.max_epochs {sweep.data.max_epochs:g}"
            left_out[run.run_id] = (f"{tokens:.3g} training tokens {spent}, more than the corpus's {corpus:.3g}"
                                    f"{times}; lower {field} or give more data (data.source)")
    if len(left_out) == len(sweep.all_runs()):
        if sweep.train.budgets:
            raise UserError(f"SWEEP: train.budgets: no shape can use any budget ({'; '.join(left_out.values())})")
        raise UserError(f"SWEEP: train.tokens: no run fits in the corpus of {sweep.data.source!r} "
                        f"({'; '.join(f'{r}: {why}' for r, why in left_out.items())})")
    sweep_dir = prepare_sweep_dir(sweep, runs_root)
    ids = [r.run_id for r in sweep.runs() if r.run_id not in left_out]
    study, study_storage = open_study(sweep, sweep_dir, storage, ids)
    outcomes: dict[str, RunOutcome] = {r: RunOutcome(r, "left out", why) for r, why in left_out.items()}
    failed_here: set[str] = set()
    missed_beats: dict[str, int] = {}
    worker = f"{socket.gethostname()}-{os.getpid()}"
    trained = 0
    while max_runs is None or trained < max_runs:
        fail_stale_trials(study)  # dead workers' trials become FAIL and are re-enqueued by the retry callback
        holders = _claims(study, ids)
        # a run whose lock is held is being trained by a trainer whose worker lost its trial (stalled, cut off)
        todo = [r for r in ids if not is_complete(sweep_dir / r) and not holders[r] and r not in failed_here
                and not held_by_another(sweep_dir / r)]
        if not todo:
            if any(holders[r] and not is_complete(sweep_dir / r) for r in ids):
                time.sleep(POLL_S)  # others are training the rest; stay to take over if one of them dies
                continue
            break
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if len(study.get_trials(deepcopy=False)) >= len(ids) and not waiting:
            study.enqueue_trial({"run_id": todo[0]})  # past the first pass over the grid
        trial = study.ask()
        run_id = trial.suggest_categorical("run_id", ids)
        trial.set_user_attr("worker", worker)
        run_dir = sweep_dir / run_id
        if is_complete(run_dir):
            study.tell(trial, _final_loss(run_dir))
            outcomes.setdefault(run_id, RunOutcome(run_id, "skipped"))
            continue
        if min(_claims(study, ids)[run_id]) != trial.number or run_id in failed_here:
            study.tell(trial, state=TrialState.PRUNED)  # another live trial holds this run
            continue
        trial.set_user_attr("started", time.time())
        cmd = run_command(sweep_dir / "sweep.yaml", run_id, run_dir, sweep.launch.nproc)
        with _Heartbeat(study_storage, study.study_name, trial.number, run_id) as heartbeat:
            for attempt in range(1 + sweep.launch.retries):
                code, last_line = _train_in_subprocess(cmd, sweep_dir / f"{run_id}.log")
                if code == 0:
                    break
        missed_beats[run_id] = missed_beats.get(run_id, 0) + heartbeat.failures
        if code != 0 and (is_complete(run_dir) or held_by_another(run_dir)):
            # the trainer found the run locked: a stalled worker's trainer still has it, or just finished it
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
            outcomes.setdefault(run_id, RunOutcome(run_id, "elsewhere"))
            continue
        # skip_if_finished: a worker cut off from the storage past the grace period finds its trial failed already
        if code == 0 and is_complete(run_dir):
            study.tell(trial, _final_loss(run_dir), skip_if_finished=True)
            outcomes[run_id] = RunOutcome(run_id, "trained")
            trained += 1
        else:
            try:
                trial.set_user_attr("error", last_line[-500:])
            except UpdateFinishedTrialError:
                pass  # failed already as stale while this worker was cut off
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            failed_here.add(run_id)
            outcomes[run_id] = RunOutcome(run_id, "failed", last_line)
    forkserver.shutdown()  # the trainers' CPU time is this worker's children's from here on
    for r in ids:
        if r not in outcomes:
            outcomes[r] = RunOutcome(r, "skipped" if is_complete(sweep_dir / r) else "elsewhere")
    return [dataclasses.replace(outcomes[r.run_id], heartbeat_failures=missed_beats.get(r.run_id, 0))
            for r in sweep.all_runs()]


def prepare_data(sweep: SweepConfig) -> dict[int, int]:
    """Read the corpus and train the tokenizer once, before runs start in parallel processes;
    the training split's length in tokens for each vocabulary size."""
    from tlc.train.data import load_corpus, load_tokens

    try:
        corpus = load_corpus(sweep.data.source, sweep.data.val_percent, sweep.data.text_field)
    except UserError as error:  # the corpus reader names tlc train's flag; a sweep file names the field
        raise UserError(str(error).replace("--data:", "data.source:", 1)) from None
    return {vocab: len(load_tokens(corpus, vocab).train) for vocab in sorted({s.vocab_size for s in sweep.shapes})}


def design_runs(sweep: SweepConfig, size: str = "total") -> list:
    """The sweep's design for `scaling.design`: each run's N (its ``size`` parameter count, as
    `tlc fit --size` counts it) and the tokens and FLOPs of every finished-run point it will yield."""
    from scaling.design import DesignRun
    from tlc.shapes import param_counts

    design = []
    for run in sweep.runs():
        plan = plan_run(run, sweep.launch.nproc)
        steps = [b.end_step for b in plan.branches] or [plan.total_steps]
        tokens = tuple(float(k * plan.tokens_per_step) for k in steps)
        design.append(DesignRun(run.run_id, float(getattr(param_counts(run.shape), size)), tokens,
                                tuple(d * plan.flops_per_token for d in tokens)))
    return design


def _final_loss(run_dir: Path) -> float:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    return float(rows[-1]["val_loss"]) if rows else float("nan")


def summary_table(sweep_dir: Path, outcomes: list[RunOutcome]) -> str:
    """A plain-text table: one line per run with its size, budget and final metrics."""
    import json

    header = f"{'run':<18} {'status':<9} {'N (non-emb)':>11} {'tokens':>9} {'FLOPs':>9} {'val loss':>8} {'bpb':>6} {'acc':>6} {'wall s':>7}"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        run_dir = sweep_dir / o.run_id
        try:
            n = json.loads((run_dir / "config.json").read_text())["params"]["non_embedding"]
        except (OSError, ValueError, KeyError):
            n = None  # not started, or its config is what failed
        rows = read_jsonl(run_dir / "metrics.jsonl")
        last = rows[-1] if rows else {}
        cells = [
            f"{o.run_id:<18}", f"{o.status:<9}", f"{n:>11,}" if n else f"{'-':>11}",
            f"{last['tokens']:>9.3g}" if last else f"{'-':>9}", f"{last['flops']:>9.3g}" if last else f"{'-':>9}",
            f"{last['val_loss']:>8.4f}" if last else f"{'-':>8}", f"{last['val_bpb']:>6.3f}" if last else f"{'-':>6}",
            f"{last['val_acc']:>6.3f}" if last else f"{'-':>6}", f"{last['wall_s']:>7.1f}" if last else f"{'-':>7}",
        ]
        lines.append(" ".join(cells) + (f"  {o.detail}" if o.detail else ""))
    missed = {o.run_id: o.heartbeat_failures for o in outcomes if o.heartbeat_failures}
    if missed:  # a run retried elsewhere, or trained twice, is explained by these
        lines.append(f"heartbeats not recorded: {sum(missed.values())} "
                     f"({', '.join(f'{r} {n}' for r, n in missed.items())}); see the worker's log")
    return "\n".join(lines)

