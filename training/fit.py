"""Train a CHTN model and evaluate it: ``python -m training.fit --dataset webnews --out runs/webnews``.

Shows progress and validation MAP each epoch, keeps the best checkpoint by validation MAP (never test),
resumes an interrupted run from the same ``--out`` folder, writes TensorBoard logs, the resolved config,
``results.json`` and PR / training-curve plots, and prints the test MAP table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from chtn_tf.cli import ABLATIONS, add_data_args, add_max_dropped_arg, config_from_args, number
from chtn_tf.data.types import DatasetError
from chtn_tf.model.config import ExperimentConfig
from training.strategy import CHOICES as STRATEGIES

# training.fit's own flags -> config fields (the data flags are chtn_tf.cli's); None leaves the config's value.
TRAINING_FLAGS = {
    "epochs": "train.epochs", "batch_size": "train.batch_size",
    "mmd_weight": "loss.mmd", "pair_weight": "loss.pair", "source_weight": "loss.source_ce",
    "learning_rate": "optimizer.learning_rate", "optimizer": "optimizer.name",
    "representation": "model.representation", "image_top_blocks": "model.image_top_blocks",
    "image_views": "train.image_views", "text_gallery_weight": "model.text_gallery_linear_weight",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.fit", description=__doc__.splitlines()[0])
    add_data_args(parser)
    parser.add_argument("--out", help="run folder (default runs/<dataset>); re-running resumes it")
    parser.add_argument("--epochs", type=number(int, low=1))
    parser.add_argument("--batch-size", type=number(int, low=1))
    parser.add_argument("--learning-rate", type=number(float, low=0.0, low_included=False))
    parser.add_argument("--optimizer", choices=("sgd", "adam"))
    parser.add_argument("--mmd-weight", type=number(float, low=0.0), help="weight of MMD_fc6 + MMD_fc7")
    parser.add_argument("--pair-weight", type=number(float, low=0.0), help="weight of pair_fc6 + pair_fc7")
    parser.add_argument("--source-weight", type=number(float, low=0.0), help="weight of the source cross-entropy")
    parser.add_argument("--representation", choices=("fc10", "fc9"))
    parser.add_argument("--text-gallery-weight", type=number(float, low=0.0, high=1.0),
                        help="share of a text's code as an item to find (image->text) taken from a logistic "
                             "regression on the training texts, 0-1 (0: the network alone; default: the dataset's, "
                             "0 with --representation fc9)")
    parser.add_argument("--image-top-blocks", type=number(int, low=0),
                        help="train the last N MBConv blocks and the head of the EfficientNet-Lite backbone from their "
                             "ImageNet weights, as the first image layers (0: frozen backbone)")
    parser.add_argument("--image-views", type=number(int, low=1, high=7),
                        help="cached views per training image (1-7: the image, its mirror, 80%% crops); each epoch "
                             "shows one per pair (default: 5 for --manifest, 1 for the named datasets)")
    parser.add_argument("--ablation", choices=ABLATIONS, default="none", help="switch off one part of CHTN")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="tf.distribute strategy (default auto: multi-worker when TF_CONFIG names several workers, "
                             "mirrored with several GPUs, else default); --batch-size is the global batch")
    parser.add_argument("--no-resume", action="store_true",
                        help="start over, replacing the run in --out (default: continue it)")
    add_max_dropped_arg(parser)
    parser.add_argument("--quiet", action="store_true",
                        help="one line per epoch instead of progress bars (the default when output is not a terminal)")
    return parser


def resolve_config(args) -> ExperimentConfig:
    """The config a command line asks for: --config file or the dataset's defaults, then flag overrides."""
    if args.representation == "fc9" and args.text_gallery_weight is None:
        # The text regression mixes class probabilities, which fc9 activations are not.
        args = argparse.Namespace(**{**vars(args), "text_gallery_weight": 0.0})
    return config_from_args(args, TRAINING_FLAGS)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger("chtn").setLevel(logging.INFO)  # chtn's progress; libraries' INFO chatter stays hidden
    try:
        config = resolve_config(args)
    except (DatasetError, ValueError) as e:
        return _error(str(e))
    name = config.data.dataset or os.path.splitext(os.path.basename(config.data.manifest))[0]
    run_dir = args.out or os.path.join("runs", name)
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        return _error(f"--out {run_dir} is a file; pass a folder (new, or a run folder to continue)")

    from training.strategy import StrategyError, check_global_batch, select_strategy

    try:
        # First: a multi-worker strategy must exist before TensorFlow runs anything else.
        distribution = select_strategy(args.strategy)
        check_global_batch(config.train.batch_size, distribution)
    except StrategyError as e:
        return _error(str(e))
    print(distribution.describe(), flush=True)

    from chtn_tf.atomic import FolderBusy
    from chtn_tf.data.checks import check_usable
    from chtn_tf.data import read_dataset
    from training.inputs import prepare_inputs
    from training.run import RunConflict, check_config, check_data, format_results, train_and_evaluate

    resume = not args.no_resume
    try:
        if resume:
            check_config(run_dir, config)  # before the data is read: a refused resume costs nothing
        dataset = read_dataset(config)
        if resume:
            check_data(run_dir, config, dataset)  # the classes, before the features are computed
    except (DatasetError, RunConflict, ValueError) as e:
        return _error(str(e))
    print_problems(dataset)
    verdict = check_usable(dataset, max_dropped=args.max_dropped)
    for warning in verdict.warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    if verdict.errors:
        return _error(f"{dataset.name} is not usable: " + "; ".join(verdict.errors)
                      + " (`python -m chtn_tf.data.inspect` lists every problem)")
    try:
        inputs = prepare_inputs(config, progress=not args.quiet, dataset=dataset,
                                shard=(distribution.worker_index, distribution.num_workers))
    except (DatasetError, FileNotFoundError, ValueError) as e:
        return _error(str(e))
    except TimeoutError as e:  # a feature shard of another worker never came
        print(f"error: {e}", file=sys.stderr)
        return 1
    dataset = inputs.dataset
    print(f"{dataset.name}: {len(dataset.splits['train'])} train / {len(dataset.splits['val'])} val / "
          f"{len(dataset.splits['test'])} test pairs, {dataset.num_classes} classes; image input: "
          f"{inputs.backbone['name']} ({_image_input(inputs)}); source domain: "
          f"{'none' if inputs.source_features is None else f'{len(inputs.source_features)} images, {inputs.num_source_classes} classes'}",
          flush=True)
    import tensorflow as tf

    try:
        if resume:
            check_data(run_dir, config, inputs)
        results = train_and_evaluate(config, inputs, run_dir, resume=resume,
                                     verbose=2 if args.quiet or not sys.stdout.isatty() else "auto",
                                     distribution=distribution)
    except (RunConflict, FolderBusy, StrategyError) as e:
        return _error(str(e))
    except tf.errors.OpError as e:
        from training.strategy import is_lost_worker, lost_worker_message

        if not is_lost_worker(e, distribution):
            raise
        print(f"error: {lost_worker_message(e, distribution)}", file=sys.stderr, flush=True)
        return 1
    print()
    print(format_results(results))
    if distribution.num_workers > 1:
        print(f"worker {distribution.worker_index} of {distribution.num_workers}: trained weights sha256 "
              f"{results['weights_sha256']} (the same on every worker)")
    if not distribution.is_chief:
        print(f"\nrun folder (written by worker 0): {run_dir}")
        return 0
    print(f"\nrun folder: {run_dir} (results.json, examples.html, pr_curves.png, training_curves.png, "
          f"logs/ for TensorBoard)")
    return 0


def print_problems(dataset, *, limit: int = 10) -> None:
    """One line per kind of dropped pair (count and the first ids), and the first few problems in full."""
    dropped = [p for p in dataset.problems if p.dropped]
    if not dropped:
        return
    kinds = {}
    for problem in dropped:
        kinds.setdefault(problem.kind, []).append(problem)
    print(f"  {len(dropped)} pairs dropped (`python -m chtn_tf.data.inspect` lists them all):", flush=True)
    for kind, problems in kinds.items():
        ids = [p.pair_id or p.where for p in problems]
        print(f"    {kind}: {len(problems)} ({', '.join(ids[:limit])}{' ...' if len(ids) > limit else ''})")
    for problem in dropped[:3]:
        print(f"    - {problem}")


def _image_input(inputs) -> str:
    top_blocks = inputs.backbone.get("top_blocks")
    views = f", {inputs.num_train_views} views per training image" if inputs.num_train_views > 1 else ""
    if not top_blocks:
        return f"{inputs.feature_dim}-d{views}"
    shape = "x".join(str(d) for d in inputs.backbone["map_shape"])
    return f"cached {shape} feature maps{views}; its last {top_blocks} block(s) and head train from ImageNet weights"


if __name__ == "__main__":
    sys.exit(main())
