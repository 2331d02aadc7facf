"""Search CHTN's loss weights and learning rate: ``python -m training.tune --dataset wikipedia --out DIR --max-trials 6``.

Objective: validation MAP (mean of both directions), maximised; the test split is never read. Trials run on
the cached backbone features, so one costs seconds to minutes. The first trial of a random or Bayesian search
is the base config itself, so the best config is never worse on validation than the defaults. Re-running the
same command with a larger ``--max-trials`` continues the search in ``DIR`` (an interrupted trial is rerun).
At the end it writes ``DIR/best_config.json`` (``python -m training.fit --config DIR/best_config.json``
retrains the best trial) and ``DIR/trials.json``, and prints a table of all trials.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from chtn_tf.atomic import write_json_atomic
from chtn_tf.data.types import DatasetError
from chtn_tf.model.config import ExperimentConfig

TUNERS = ("random", "bayesian", "hyperband")
PROJECT = "search"  # keras-tuner's project folder inside --out
SETTINGS = "search.json"  # what a resumed search must match


def build_parser() -> argparse.ArgumentParser:
    from training.fit import DATASETS

    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__.splitlines()[0])
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset", choices=DATASETS, help="a registered dataset")
    data.add_argument("--manifest", help="CSV manifest image,text,label[,split] of your own collection")
    parser.add_argument("--config", help="base config JSON (default: the dataset's registered config)")
    parser.add_argument("--out", required=True, help="search folder; re-running continues the search in it")
    parser.add_argument("--max-trials", type=int, default=10, help="total trials in the search, earlier ones included")
    parser.add_argument("--tuner", choices=TUNERS, default="random")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (hyperband: the most a trial gets)")
    parser.add_argument("--data-dir", help="data root (default: $CHTN_DATA_DIR, then ~/.cache/chtn/datasets)")
    parser.add_argument("--seed", type=int, help="seed of the model, the data order and the search")
    parser.add_argument("--backbone", help="image backbone for raw-image datasets (default: the config's)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every trial's weights (default: only the best trial's; hyperband keeps all)")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0,
                        help="Keras output inside a trial: 0 validation MAP lines only, 1 progress bars, 2 a line per epoch")
    return parser


def base_config(args) -> ExperimentConfig:
    """The config every trial starts from: ``training.fit``'s resolution of the same data flags."""
    from training.fit import build_parser as fit_parser, resolve_config

    fit_args = fit_parser().parse_args([])
    fit_args.dataset, fit_args.manifest, fit_args.config = args.dataset, args.manifest, args.config
    fit_args.data_dir = os.path.abspath(args.data_dir) if args.data_dir else None
    fit_args.seed, fit_args.backbone = args.seed, args.backbone
    return resolve_config(fit_args)


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
        """keras-tuner's Tuner that keeps only the best trial's checkpoint (they are 10s of MB each)."""

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if keep_checkpoints:
                return
            best = {t.trial_id for t in self.oracle.get_best_trials(1)}
            for trial_id in self.oracle.trials:
                path = self._get_checkpoint_fname(trial_id)
                if trial_id not in best and os.path.exists(path):
                    os.remove(path)

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


def search_settings(args, base: ExperimentConfig, hypermodel) -> dict:
    """What defines a search; a resumed search must match it (``--max-trials`` may grow, data may move)."""
    config = base.to_dict()
    config["data"].pop("data_dir")
    return {"tuner": args.tuner, "epochs": hypermodel.epochs, "base_config": config,
            "search_space": [d.name for d in hypermodel.dimensions]}


def check_resumable(out: str, settings: dict) -> None:
    """Raises ValueError when ``out`` holds a search with other settings; records them for a new one."""
    path = os.path.join(out, SETTINGS)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        # JSON has no tuples: compare both as JSON.
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in settings if json.loads(json.dumps(settings[k])) != previous.get(k))
            raise ValueError(f"{out} holds a search with other settings ({', '.join(changed)} differ; see {path}); "
                             f"re-run with the same --tuner/--epochs/config to continue it, or use a new --out")
    elif os.path.isdir(os.path.join(out, PROJECT)):
        raise ValueError(f"{out}/{PROJECT} exists but {path} does not: not a search made by training.tune; "
                         f"use a new --out")
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
        base = base_config(args)
        from training.inputs import prepare_inputs

        inputs = prepare_inputs(base)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from training.hypermodel import CHTNHyperModel

    hypermodel = CHTNHyperModel(base, inputs, epochs=args.epochs, fit_verbose=args.verbose)
    names = [d.name for d in hypermodel.dimensions]
    dataset = hypermodel.inputs.dataset
    print(f"{dataset.name}: {len(dataset.splits['train'])} train / {len(dataset.splits['val'])} val pairs "
          f"(test split not used); image input: {inputs.backbone['name']}; searching {', '.join(names)}"
          + ("" if "mmd_weight" in names else " (no source domain: the MMD weight has no effect and is not searched)"),
          flush=True)
    os.makedirs(args.out, exist_ok=True)
    try:
        check_resumable(args.out, search_settings(args, base, hypermodel))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tuner = make_tuner(args.tuner, hypermodel, directory=args.out, max_trials=args.max_trials,
                       seed=base.train.seed, keep_checkpoints=args.keep_checkpoints)
    done = sum(1 for t in tuner.oracle.trials.values() if t.status in ("COMPLETED", "FAILED", "INVALID"))
    if done:
        print(f"continuing the {args.tuner} search in {args.out}: {done} trial(s) already there, "
              f"up to {args.max_trials} in all", flush=True)

    import keras

    tensorboard = keras.callbacks.TensorBoard(log_dir=os.path.join(args.out, "logs"), write_graph=False)
    stopped = None
    try:
        tuner.search(callbacks=[tensorboard], verbose=1)
    except RuntimeError as e:  # keras-tuner stops after several consecutive failed trials
        stopped = str(e).strip()

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
