"""The whole job on embedded data, in minutes on a CPU: the README's first command (`make demo`).

    python demo.py [--key=value ...]

1. draws synthetic face-like identities (data/synthetic.py): training identities and disjoint held-out ones;
2. writes a pairs.txt for the held-out identities (generate_pairs.py);
3. trains a small IR-ResNet with a margin loss (train_nets.py; CosFace by default) for `max_steps` steps;
4. evaluates the untrained and the trained network with the 10-fold protocol (eval_ckpt_file.py), logs
   `Accuracy-Flip` and writes the reports and ROC curves into `output_dir/eval`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

from config import Choices, Config, Length, PositiveInt, Range, RequiredPath, run_script

log = logging.getLogger("demo")


class Args(Config):
    output_dir: RequiredPath = "./output/demo"  # everything the demo writes
    num_train_identities: Annotated[int, Range(2)] = 60  # synthetic identities to train on
    num_eval_identities: Annotated[int, Range(2)] = 30  # other identities, only for verification
    images_per_identity: Annotated[int, Range(2)] = 16  # images drawn per identity (pose, light, expression vary)
    # square images; the IR-ResNet is built for this size (small: CPU minutes)
    image_size: Annotated[int, Range(16, 512)] = 48
    net_depth: Annotated[int, Choices(18, 34, 50, 100, 152, 200)] = 18  # IR-ResNet depth
    # converges within minutes from scratch on 60 identities; arcface needs longer
    loss: Annotated[str, Choices("arcface", "cosface", "combined", "softmax")] = "cosface"
    batch_size: PositiveInt = 32  # images per step
    max_steps: PositiveInt = 240  # training steps (3-4 minutes on 2 free CPU cores)
    # learning rates: the peak of the cosine schedule, or the piecewise values between lr_steps
    lr_values: Annotated[list[float], Range(0, low_open=True), Length(1)] = [0.03]
    lr_steps: Annotated[list[int], Range(1)] = []  # piecewise boundaries, plain step numbers (not scaled by batch)
    # "cosine" (warm-up, then lr_values[0] down to 0: 0.943 held-out in 240 steps, where the seed's piecewise
    # [0.01, 0.001] at 250 reached 0.935 in 300), "poly" or "piecewise"
    lr_schedule: Annotated[str, Choices("piecewise", "poly", "cosine")] = "cosine"
    warmup_steps: Annotated[int, Range(0)] = 20  # linear warm-up steps before the schedule
    pairs_per_fold: PositiveInt = 30  # matched and mismatched pairs per fold, 10 folds
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # data, initialisation and shuffling


def make_data(args: Args, root: Path) -> tuple[Path, Path, Path]:
    """Synthetic train/held-out identity folders and the held-out pairs.txt; reused when already there."""
    import generate_pairs
    from data import synthetic

    train_dir, eval_dir, pairs = root / "train", root / "heldout", root / "heldout_pairs.txt"
    synthetic.generate(train_dir, args.num_train_identities, args.images_per_identity, seed=args.seed,
                       image_size=args.image_size)
    # Another seed: identities never seen in training.
    synthetic.generate(eval_dir, args.num_eval_identities, args.images_per_identity, seed=args.seed + 1,
                       image_size=args.image_size)
    generate_pairs.main(generate_pairs.Args(data_dir=str(eval_dir), pairs_filepath=str(pairs), num_folds=10,
                                            pairs_per_fold=args.pairs_per_fold, seed=args.seed))
    return train_dir, eval_dir, pairs


def train_args(args: Args, train_dir: Path, run_dir: Path, max_steps: int):
    import train_nets

    return train_nets.Args(
        net_depth=args.net_depth, loss=args.loss, train_dataset_dir=str(train_dir),
        image_size=[args.image_size, args.image_size], batch_size=args.batch_size, max_steps=max_steps,
        lr_values=args.lr_values, lr_steps=args.lr_steps, lr_steps_scaled=False, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, seed=args.seed,
        ckpt_path=str(run_dir / "ckpt"), summary_path=str(run_dir / "summary"), log_file_path=str(run_dir / "logs"),
        ckpt_interval=max(max_steps, 1), validate_interval=0, summary_interval=100, show_info_interval=50)


def evaluate(args: Args, checkpoint: str, eval_dir: Path, pairs: Path, out: Path) -> dict:
    import eval_ckpt_file

    reports = eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=checkpoint, ckpt_index_list=[], eval_dataset=str(eval_dir), eval_pair=str(pairs),
        batch_size=64, output_dir=str(out)))
    return reports[0]


def main(args: Args) -> dict:
    import train_nets
    from nets.spec import NetworkSpec

    root = Path(args.output_dir)
    train_dir, eval_dir, pairs = make_data(args, root / "data")
    # The same network before training (same seed, same initial weights) is the baseline to beat: a random
    # IR-ResNet already scores well above 0.5 on faces.
    settings = train_args(args, train_dir, root / "run", args.max_steps)
    untrained_path = root / "untrained.keras"
    NetworkSpec.from_mapping(settings.to_dict()).build().save(untrained_path)
    baseline = evaluate(args, str(untrained_path), eval_dir, pairs, root / "eval_untrained")
    trained = train_nets.train(settings)
    result = evaluate(args, trained["checkpoint"], eval_dir, pairs, root / "eval")
    log.info("held-out synthetic identities, %d pairs: untrained Accuracy-Flip %.4f, trained %.4f (%d steps)",
             result["num_pairs"], baseline["accuracy_mean"], result["accuracy_mean"], trained["step"])
    log.info("reports and ROC curve in %s", root / "eval")
    return {"untrained": baseline["accuracy_mean"], "trained": result["accuracy_mean"], "step": trained["step"]}


def cli() -> NoReturn:
    """The `insightface-demo` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
