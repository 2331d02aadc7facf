"""Search CHTN's loss weights and learning rate: ``python -m training.tune --dataset wikipedia --out DIR --max-trials 6``.

Objective: validation MAP (mean of both directions), maximised; the test split is never read. Trials run on
the cached backbone features, so one costs seconds to minutes. The first trial of a random or Bayesian search
is the base config itself, so the best config is never worse on validation than the defaults. Re-running the
same command with a larger ``--max-trials`` continues the search in ``DIR`` (an interrupted trial is rerun).
At the end it writes ``DIR/best_config.json`` (``python -m training.fit --config DIR/best_config.json``
retrains the best trial) and ``DIR/trials.json``, and prints a table of all trials.

Several machines search together with keras-tuner's own chief/worker protocol: run the same command on
every process with ``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT`` (where the chief serves the oracle)
and ``KERASTUNER_TUNER_ID`` (``chief`` for the one process that serves it, ``tuner0``, ``tuner1``, ... one
distinct id per worker). The chief hands out trials and runs none; each worker runs the trials it is given
(a trial goes to one worker only) and writes that trial's folder; when all trials are done the chief writes
``trials.json`` and ``best_config.json``. ``--out`` must be a folder every process shares.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from chtn_tf.atomic import write_json_atomic
from chtn_tf.cli import add_data_args, add_max_dropped_arg, config_from_args
from chtn_tf.data.types import DatasetError
from chtn_tf.model.config import ExperimentConfig

TUNERS = ("random", "bayesian", "hyperband")
PROJECT = "search"  # keras-tuner's project folder inside --out
SETTINGS = "search.json"  # what a resumed search must match


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__.splitlines()[0])
    add_data_args(parser)
    add_max_dropped_arg(parser)
    parser.add_argument("--out", required=True, help="search folder; re-running continues the search in it")
    parser.add_argument("--max-trials", type=int, default=10, help="total trials in the search, earlier ones included")
    parser.add_argument("--tuner", choices=TUNERS, default="random")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (hyperband: the most a trial gets)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every trial's weights (default: only the best trial's; hyperband keeps all)")
    parser.add_argument("--strategy", choices=("auto", "default", "mirrored"), default="auto",
                        help="tf.distribute strategy of each trial (default auto: mirrored over several GPUs, else "
                             "default); searches scale out over machines with KERASTUNER_* (see the module doc)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0,
                        help="Keras output inside a trial: 0 validation MAP lines only, 1 progress bars, 2 a line per epoch")
    return parser


def tuning_role(environ=None) -> str:
    """``single``, ``chief`` or ``worker``: keras-tuner's distributed-search role from its environment variables.

    keras-tuner switches to client/server mode by itself when ``KERASTUNER_ORACLE_IP`` is set; the process
    whose ``KERASTUNER_TUNER_ID`` contains "chief" serves the oracle.

    Raises:
        ValueError: ``KERASTUNER_ORACLE_IP`` without ``KERASTUNER_ORACLE_PORT`` or ``KERASTUNER_TUNER_ID``.
    """
    env = os.environ if environ is None else environ
    if "KERASTUNER_ORACLE_IP" not in env:
        return "single"
    missing = [name for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not env.get(name)]
    if missing:
        raise ValueError(f"KERASTUNER_ORACLE_IP is set (distributed search) but {' and '.join(missing)} is not: set "
                         f"KERASTUNER_ORACLE_PORT to the chief's port and KERASTUNER_TUNER_ID to 'chief' on the chief, "
                         f"tuner0, tuner1, ... on the workers")
    if not env["KERASTUNER_ORACLE_PORT"].isdigit():
        raise ValueError(f"KERASTUNER_ORACLE_PORT must be a port number, got {env['KERASTUNER_ORACLE_PORT']!r}")
    return "chief" if "chief" in env["KERASTUNER_TUNER_ID"] else "worker"


class ChiefWatch:
    """Ends a distributed-search worker whose chief has gone away, instead of letting it wait for an hour.

    keras-tuner's workers wait up to an hour for each answer of the chief. Once the chief has answered this
    process (its oracle port accepted a connection), a daemon thread checks the port every ``interval``
    seconds; when it has refused connections for ``grace`` seconds the worker prints which chief it lost and
    exits with status 1. Stop it (:meth:`stop`) when the search is over: the chief then leaves by design.
    """

    def __init__(self, host: str, port: int, *, grace: float = 120.0, interval: float = 5.0, on_lost=None):
        import threading

        self.host, self.port, self.grace, self.interval = host, int(port), grace, interval
        self.on_lost = on_lost or self._exit
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="chief-watch", daemon=True)

    def start(self) -> "ChiefWatch":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _reachable(self) -> bool:
        import socket

        try:
            with socket.create_connection((self.host, self.port), timeout=self.interval):
                return True
        except OSError:
            return False

    def _watch(self) -> None:
        import time

        seen, lost_since = False, None
        while not self._stop.wait(self.interval):
            if self._reachable():
                seen, lost_since = True, None
            elif seen:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > self.grace and not self._stop.is_set():
                    self.on_lost(f"lost the tuning chief at {self.host}:{self.port} "
                                 f"(no answer for {self.grace:.0f} s); "
                                 f"the trial in progress is abandoned. Restart the chief with the same command: it "
                                 f"continues the search, and this worker (same KERASTUNER_TUNER_ID) resumes its trial")
                    return

    @staticmethod
    def _exit(message: str) -> None:
        # From a watcher thread: the main thread is blocked inside keras-tuner's gRPC call.
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(1)


def _oracle_class(kind: str):
    import keras_tuner

    parent = {"random": keras_tuner.oracles.RandomSearchOracle,
              "bayesian": keras_tuner.oracles.BayesianOptimizationOracle}[kind]

    class BaseConfigFirst(parent):
        """Runs the search space's defaults (the base config) as the first trial of a new search."""

        def populate_space(self, trial_id):
            if not self.trials:
                return {"status": "RUNNING", "values": {p.name: p.default for p in self.hyperparameters.space}}
            return super().populate_space(trial_id)

    return BaseConfigFirst


def make_tuner(kind: str, hypermodel, *, directory: str, max_trials: int, seed: int, keep_checkpoints: bool = False):
    """A keras-tuner tuner over ``hypermodel`` in ``directory/search``, reloaded if it exists there."""
    import keras_tuner

    from training.hypermodel import OBJECTIVE

    class CHTNTuner(keras_tuner.Tuner):
        """keras-tuner's Tuner that keeps only the best trial's checkpoint (they are 10s of MB each).

        A distributed-search worker sees only its own trials: the chief prunes at the end
        (:func:`prune_checkpoints`).
        """

        ran = ()  # trial ids this process ran

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            self.ran = (*self.ran, trial.trial_id)
            if not keep_checkpoints and tuning_role() == "single":
                prune_checkpoints(self)

    common = dict(directory=directory, project_name=PROJECT, overwrite=False)
    if kind == "hyperband":
        # Successive halving resumes trials from earlier ones' checkpoints, so all are kept; the brackets
        # repeat until --max-trials.
        tuner = keras_tuner.Hyperband(hypermodel, objective=OBJECTIVE, max_epochs=hypermodel.epochs, factor=3,
                                      hyperband_iterations=None, seed=seed, **common)
        tuner.oracle.max_trials = max_trials
        return tuner
    oracle = _oracle_class(kind)(objective=OBJECTIVE, max_trials=max_trials, seed=seed)
    return CHTNTuner(oracle=oracle, hypermodel=hypermodel, **common)


def prune_checkpoints(tuner) -> None:
    """Removes every trial's weights but the best trial's (needs the oracle itself: single process or chief)."""
    best = {t.trial_id for t in tuner.oracle.get_best_trials(1)}
    for trial_id in tuner.oracle.trials:
        path = tuner._get_checkpoint_fname(trial_id)
        if trial_id not in best and os.path.exists(path):
            os.remove(path)


def search_settings(args, base: ExperimentConfig, hypermodel) -> dict:
    """What defines a search; a resumed search must match it (``--max-trials`` may grow, data may move)."""
    config = base.to_dict()
    config["data"].pop("data_dir")
    return {"tuner": args.tuner, "epochs": hypermodel.epochs, "base_config": config,
            "search_space": [d.name for d in hypermodel.dimensions]}


def check_resumable(out: str, settings: dict, *, record: bool = True) -> None:
    """Raises ValueError when ``out`` holds a search with other settings; records them for a new one.

    ``record=False`` (a distributed-search worker): only compares, with the chief's record when it exists.
    """
    path = os.path.join(out, SETTINGS)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        # JSON has no tuples: compare both as JSON.
        changed = sorted(k for k in settings if json.loads(json.dumps(settings[k])) != previous.get(k))
        if changed and record:
            raise ValueError(f"{out} holds a search with other settings ({', '.join(changed)} differ; see {path}); "
                             f"re-run with the same --tuner/--epochs/config to continue it, or use a new --out")
        if changed:
            raise ValueError(f"this worker's search differs from the chief's in {out} ({', '.join(changed)}; see "
                             f"{path}): run the same command, with the same data and flags, on every process")
    elif not record:
        return
    elif os.path.exists(os.path.join(out, PROJECT, "oracle.json")):
        # (An oracle-less project folder is fine: distributed-search workers create it while the chief starts.)
        raise ValueError(f"{out}/{PROJECT} holds a search but {path} does not exist: not a search made by "
                         f"training.tune; use a new --out")
    else:
        write_json_atomic(path, settings)


def trial_rows(tuner, hypermodel) -> list:
    """One row per trial: number, id, status, hyper-parameters, epochs, best epoch, validation MAP."""
    names = [d.name for d in hypermodel.dimensions]
    rows = []
    for trial in tuner.oracle.trials.values():
        hp = trial.hyperparameters.values
        row = {"number": int(trial.trial_id) + 1, "trial_id": trial.trial_id, "status": str(trial.status),
               "hyperparameters": {n: hp[n] for n in names if n in hp},
               "epochs": hypermodel.trial_epochs(trial.hyperparameters), "best_epoch": None,
               "val_map_avg": trial.score, "val_map_i2t": None, "val_map_t2i": None}
        if trial.score is not None:
            # keras-tuner's step is the best epoch's index in this trial's History, which starts at
            # Hyperband's initial epoch when the trial continues an earlier one.
            row["best_epoch"] = int(hp.get("tuner/initial_epoch", 0)) + int(trial.best_step) + 1
            for name in ("val_map_i2t", "val_map_t2i"):
                if trial.metrics.exists(name):
                    at_best = [o.mean() for o in trial.metrics.get_history(name) if o.step == trial.best_step]
                    row[name] = float(at_best[0]) if at_best else None
        if trial.message:
            row["message"] = trial.message.strip().splitlines()[-1]
        rows.append(row)
    rows.sort(key=lambda r: (r["val_map_avg"] is None, -(r["val_map_avg"] or 0.0), r["number"]))
    return rows


def format_table(rows: list, names: list) -> str:
    """The printed summary: one line per trial, best first."""
    def number(value, spec):
        return "-" if value is None else format(value, spec)

    header = f"{'trial':>5}  {'status':<10}" + "".join(f"{n:>14}" for n in names)
    header += f"{'epochs':>7}{'best ep':>8}{'val I->T':>9}{'val T->I':>9}{'val MAP':>9}"
    lines = [header]
    for r in rows:
        line = f"{r['number']:>5}  {r['status']:<10}"
        line += "".join(f"{number(r['hyperparameters'].get(n), '.4g'):>14}" for n in names)
        line += (f"{r['epochs']:>7}{number(r['best_epoch'], 'd'):>8}{number(r['val_map_i2t'], '.4f'):>9}"
                 f"{number(r['val_map_t2i'], '.4f'):>9}{number(r['val_map_avg'], '.4f'):>9}")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.max_trials < 1 or args.epochs < 1:
        print("error: --max-trials and --epochs must be at least 1", file=sys.stderr)
        return 2
    try:
        role = tuning_role()
        from training.strategy import select_strategy

        # First (a strategy must exist before TensorFlow runs anything); TF_CONFIG plays no part in a search.
        distribution = select_strategy(args.strategy, use_tf_config=False)
        base = config_from_args(args)  # the base config every trial starts from
        from chtn_tf.data import read_dataset
        from chtn_tf.data.checks import check_usable
        from training.inputs import prepare_inputs

        dataset = read_dataset(base)
        verdict = check_usable(dataset, max_dropped=args.max_dropped)  # the verdict training.fit gives
        for warning in verdict.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        if verdict.errors:
            raise ValueError(f"{dataset.name} is not usable: " + "; ".join(verdict.errors)
                             + " (`python -m chtn_tf.data.inspect` lists every problem)")
        inputs = prepare_inputs(base, dataset=dataset)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from training.hypermodel import CHTNHyperModel

    hypermodel = CHTNHyperModel(base, inputs, epochs=args.epochs, fit_verbose=args.verbose,
                                strategy=distribution.strategy)
    names = [d.name for d in hypermodel.dimensions]
    dataset = hypermodel.inputs.dataset
    print(f"{dataset.name}: {len(dataset.splits['train'])} train / {len(dataset.splits['val'])} val pairs "
          f"(test split not used); image input: {inputs.backbone['name']}; searching {', '.join(names)}"
          + ("" if "mmd_weight" in names else " (no source domain: the MMD weight has no effect and is not searched)"),
          flush=True)
    if role != "single":
        where = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
        print(f"distributed search: {os.environ['KERASTUNER_TUNER_ID']} is the "
              + ("chief: it serves the oracle at " + where + " and runs no trial" if role == "chief"
                 else "worker: it runs the trials the chief at " + where + " hands out"), flush=True)
    os.makedirs(args.out, exist_ok=True)
    try:
        check_resumable(args.out, search_settings(args, base, hypermodel), record=role != "worker")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tuner = make_tuner(args.tuner, hypermodel, directory=args.out, max_trials=args.max_trials,
                       seed=base.train.seed, keep_checkpoints=args.keep_checkpoints)
    if role != "worker":
        done = sum(1 for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID"))
        if done:
            print(f"continuing the {args.tuner} search in {args.out}: {done} trial(s) already there, "
                  f"up to {args.max_trials} in all", flush=True)

    import keras

    tensorboard = keras.callbacks.TensorBoard(log_dir=os.path.join(args.out, "logs"), write_graph=False)
    stopped = None
    watch = None
    if role == "worker":
        watch = ChiefWatch(os.environ["KERASTUNER_ORACLE_IP"], int(os.environ["KERASTUNER_ORACLE_PORT"])).start()
    try:
        tuner.search(callbacks=[tensorboard], verbose=1)
    except RuntimeError as e:  # keras-tuner stops after several consecutive failed trials
        stopped = str(e).strip()
    finally:
        if watch is not None:
            watch.stop()
    if role == "worker":
        ran = getattr(tuner, "ran", [])
        print(f"\n{os.environ['KERASTUNER_TUNER_ID']} ran {len(ran)} trial(s)"
              + (f": {', '.join(str(int(t) + 1) for t in ran)}" if ran else "")
              + f". The chief writes {os.path.join(args.out, 'trials.json')} and best_config.json.")
        if stopped:
            print(f"search stopped: {stopped}", file=sys.stderr)
            return 1
        return 0
    # Hyperband continues trials from earlier ones' weights: it keeps them all.
    prune = role == "chief" and not args.keep_checkpoints and args.tuner != "hyperband"
    return report_search(args, tuner, hypermodel, names, stopped, prune=prune)


def report_search(args, tuner, hypermodel, names, stopped, *, prune: bool) -> int:
    """Writes ``trials.json`` and ``best_config.json`` and prints the table (single process or chief)."""
    if prune:
        prune_checkpoints(tuner)
    rows = trial_rows(tuner, hypermodel)
    completed = [r for r in rows if r["val_map_avg"] is not None]
    best_trial = tuner.oracle.get_best_trials(1)[0] if completed else None
    summary = {"objective": "val_map_avg (validation MAP, mean of image->text and text->image; maximised)",
               "tuner": args.tuner, "epochs_per_trial": args.epochs, "search_space": names,
               "best_trial": None if best_trial is None else best_trial.trial_id, "trials": rows}
    write_json_atomic(os.path.join(args.out, "trials.json"), summary)
    print()
    print(format_table(rows, names))
    if stopped:
        print(f"\nsearch stopped: {stopped}", file=sys.stderr)
    if not completed:
        print("error: every trial failed; see the messages above and trials.json", file=sys.stderr)
        return 1

    best_path = os.path.join(args.out, "best_config.json")
    hypermodel.trial_config(best_trial.hyperparameters.copy()).to_json(best_path)
    best = completed[0]
    first = next((r for r in rows if r["number"] == 1), None)
    print(f"\n{len(completed)} of {len(rows)} trial(s) completed. Best: trial {best['number']}, validation MAP "
          f"{best['val_map_avg']:.4f} (I->T {best['val_map_i2t']:.4f}, T->I {best['val_map_t2i']:.4f}) at epoch "
          f"{best['best_epoch']} of {best['epochs']}.")
    if args.tuner != "hyperband" and first is not None and first["val_map_avg"] is not None:
        print(f"Trial 1 (the base config) scored {first['val_map_avg']:.4f}.")
    print(f"Best config: {best_path}\nTrain the final model with:\n"
          f"  python -m training.fit --config {best_path} --out runs/tuned   # add --epochs N for a longer schedule")
    return 0


if __name__ == "__main__":
    sys.exit(main())
