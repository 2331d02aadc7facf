"""Search CHTN's loss weights and learning rate: ``python -m training.tune --dataset wikipedia --out DIR --max-trials 6``.

Objective: validation MAP (mean of both directions), maximised; the test split is never used. Trials run on
cached backbone features, so one costs seconds to minutes. Re-running the same command with a larger
``--max-trials`` continues the search in ``DIR``. At the end it writes ``DIR/best_config.json`` (train the
final model with ``python -m training.fit --config DIR/best_config.json``) and ``DIR/trials.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from chtn_tf.atomic import write_json_atomic
from chtn_tf.data.types import DatasetError

TUNERS = ("random", "bayesian", "hyperband")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.tune", description=__doc__.splitlines()[0])
    data = parser.add_mutually_exclusive_group(required=False)
    data.add_argument("--dataset", choices=("wikipedia", "webnews", "pascal", "nuswide10k"))
    data.add_argument("--manifest")
    parser.add_argument("--config", help="base config JSON (default: the dataset's)")
    parser.add_argument("--out", required=True, help="search folder; re-running continues the search in it")
    parser.add_argument("--max-trials", type=int, default=10)
    parser.add_argument("--tuner", choices=TUNERS, default="random")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (hyperband: the maximum)")
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--backbone")
    return parser


def make_tuner(kind: str, hypermodel, *, out: str, max_trials: int, epochs: int, seed: int):
    import keras_tuner

    from training.hypermodel import OBJECTIVE

    common = dict(objective=OBJECTIVE, directory=out, project_name="search", overwrite=False, seed=seed)
    if kind == "random":
        return keras_tuner.RandomSearch(hypermodel, max_trials=max_trials, **common)
    if kind == "bayesian":
        return keras_tuner.BayesianOptimization(hypermodel, max_trials=max_trials, **common)
    return keras_tuner.Hyperband(hypermodel, max_epochs=epochs, max_consecutive_failed_trials=3, **common)


def trial_table(tuner) -> list:
    """One row per trial: id, status, hyper-parameters, best validation MAP."""
    rows = []
    for trial in tuner.oracle.trials.values():
        rows.append({"trial_id": trial.trial_id, "status": str(trial.status),
                     "hyperparameters": dict(trial.hyperparameters.values), "val_map_avg": trial.score})
    rows.sort(key=lambda r: (r["val_map_avg"] is None, -(r["val_map_avg"] or 0)))
    return rows


def format_table(rows: list) -> str:
    lines = [f"{'trial':<8}{'status':<12}{'mmd':>10}{'pair':>10}{'lr':>10}{'dropout':>9}{'val MAP':>10}"]
    for r in rows:
        hp = r["hyperparameters"]
        score = f"{r['val_map_avg']:.4f}" if r["val_map_avg"] is not None else "-"
        lines.append(f"{r['trial_id']:<8}{r['status']:<12}{hp.get('mmd_weight', 0):>10.4g}{hp.get('pair_weight', 0):>10.3g}"
                     f"{hp.get('learning_rate', 0):>10.3g}{hp.get('dropout', 0):>9.2f}{score:>10}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from training.fit import resolve_config

    fit_args = argparse.Namespace(
        dataset=args.dataset, manifest=args.manifest, config=args.config, data_dir=args.data_dir, source=None,
        epochs=None, batch_size=None, seed=args.seed, backbone=args.backbone, mmd_weight=None,
        pair_weight=None, source_weight=None, learning_rate=None, optimizer=None, representation=None,
        ablation="none")
    try:
        base = resolve_config(fit_args)
        from training.inputs import prepare_inputs

        inputs = prepare_inputs(base)
    except (DatasetError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from training.hypermodel import CHTNHyperModel

    os.makedirs(args.out, exist_ok=True)
    hypermodel = CHTNHyperModel(base, inputs, epochs=args.epochs)
    tuner = make_tuner(args.tuner, hypermodel, out=args.out, max_trials=args.max_trials, epochs=args.epochs,
                       seed=base.train.seed)
    done = len(tuner.oracle.trials)
    if done:
        print(f"continuing the search in {args.out}: {done} trial(s) already there", flush=True)
    tuner.search(verbose=1)

    rows = trial_table(tuner)
    write_json_atomic(os.path.join(args.out, "trials.json"), rows)
    print()
    print(format_table(rows))
    completed = [r for r in rows if r["val_map_avg"] is not None]
    if not completed:
        print("error: every trial failed; see the messages above", file=sys.stderr)
        return 1
    best_hp = tuner.get_best_hyperparameters(1)[0]
    best = hypermodel.trial_config(best_hp)
    # Trials are short; the final model trains for the base config's full schedule.
    best.train.epochs = base.train.epochs
    best.to_json(os.path.join(args.out, "best_config.json"))
    print(f"\nbest trial: validation MAP {completed[0]['val_map_avg']:.4f}; config: "
          f"{os.path.join(args.out, 'best_config.json')}\ntrain the final model with:\n"
          f"  python -m training.fit --config {os.path.join(args.out, 'best_config.json')} --out runs/tuned")
    return 0


if __name__ == "__main__":
    sys.exit(main())
