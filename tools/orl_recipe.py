"""One ORL training recipe, measured: train from scratch on s1-s30, verify the held-out s31-s40, print the figures.

    python tools/orl_recipe.py --orl_dir=PATH [--untrained=true] [--<train_nets key>=value ...]

The ORL set (AT&T faces: folders s1..s40 of ten 112x92 grayscale images) is first aligned by
align/align_dataset_mtcnn.py (MTCNN, 5-point warp onto the 112x112 ArcFace template; --align=false keeps the raw
images), then split by identity: s1-s30 train, s31-s40 are held out and paired by generate_pairs.py (10 folds x
`pairs_per_fold` matched + mismatched pairs, `pairs_seed`). Every key that is not one of this script's own is a
train_nets.py key and overrides `RECIPE`, this script's (and tests/test_learning.py's) recipe; e.g.
``--image_size=[64,64]`` or ``--lr_values=[0.1,0.01]``. It logs the held-out Accuracy-Flip (and the untrained
network's with --untrained=true), the steps, the training's wall seconds and the process's CPU seconds (all threads:
what the training costs on a machine shared with other jobs).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn

from config import Config, PositiveInt, Range, RequiredPath, run_script

log = logging.getLogger(__name__)

NUM_IDENTITIES = 40  # ORL's s1..s40
# tests/test_learning.py's ORL recipe (docs/training.md, "What a recipe buys", has the measured alternatives): on the
# aligned faces, a MobileFaceNet at 96x96 (0.938 held out, where IR-ResNet-18 at 48x48 reached 0.918 for the same
# CPU), a small CosFace scale for 30 classes (s=8; the default s=30 learns 0.04 less), warm-up + cosine, random crops,
# colour jitter and cutout; 600 steps cost about 350-430 s of process CPU on a calm 2-core machine.
RECIPE: dict[str, Any] = dict(backbone="mobilefacenet", image_size=[96, 96], embedding_size=128, dropout_rate=0.0,
                              batch_size=32, max_steps=600, loss="cosface", margin_s=8.0, margin_m=0.2,
                              lr_schedule="cosine", warmup_steps=60, lr_values=[0.1], aug_crop_prob=0.5,
                              aug_crop_area=[0.5, 1.0], aug_colour_prob=0.5, aug_cutout_prob=0.5, seed=0)


class Args(Config):
    orl_dir: RequiredPath = "./datasets/orl_faces"  # the ORL folders s1..s40
    output_dir: RequiredPath = "./output/orl_recipe"  # the split, pairs, checkpoints and evaluation reports
    # identities s1..sN train, the others are held out
    num_train_identities: Annotated[int, Range(2, NUM_IDENTITIES - 2)] = 30
    pairs_per_fold: PositiveInt = 30  # matched and mismatched held-out pairs per fold, 10 folds
    pairs_seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # generate_pairs.py's seed
    untrained: bool = False  # also evaluate the same network before training (same seed, same initial weights)
    # align the faces first (align/align_dataset_mtcnn.py, one worker, into output_dir/aligned; a face MTCNN misses
    # is left out and listed in its failed_images.txt); False: train and verify on the raw 112x92 images
    align: bool = True


def check_orl_folders(orl_dir: Path) -> Path:
    """orl_dir itself; a ValueError naming the folder when it or one of s1..s40 is missing."""
    if not orl_dir.is_dir():
        raise ValueError(f"orl_dir={orl_dir}: no such folder; expected the ORL folders s1..s{NUM_IDENTITIES}")
    missing = [f"s{index}" for index in range(1, NUM_IDENTITIES + 1) if not (orl_dir / f"s{index}").is_dir()]
    if missing:
        raise ValueError(f"orl_dir={orl_dir}: expected the ORL folders s1..s{NUM_IDENTITIES}; missing "
                         f"{', '.join(missing)}")
    return orl_dir


def align_faces(orl_dir: Path, aligned: Path) -> Path:
    """orl_dir aligned into `aligned` (112x112, the ArcFace template); images aligned by an earlier run are kept."""
    from align import align_dataset_mtcnn

    summary = align_dataset_mtcnn.align_dataset(align_dataset_mtcnn.Args(
        input_dir=str(orl_dir), output_dir=str(aligned), image_size=112, num_workers=1))
    log.info("ORL aligned into %s: %d of %d images", aligned, summary.aligned + summary.skipped, summary.total)
    return aligned


def split_identities(orl_dir: Path, root: Path, num_train: int) -> tuple[Path, Path]:
    """s1..s{num_train} to train on, the rest held out, as folders of links (the data stays where it is)."""
    check_orl_folders(orl_dir)
    train, heldout = root / "train", root / "heldout"
    for index in range(1, NUM_IDENTITIES + 1):
        target = (train if index <= num_train else heldout) / f"s{index}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink():
            target.symlink_to((orl_dir / f"s{index}").resolve(), target_is_directory=True)
    return train, heldout


def write_heldout_pairs(heldout: Path, pairs: Path, pairs_per_fold: int, seed: int) -> Path:
    import generate_pairs

    generate_pairs.main(generate_pairs.Args(data_dir=str(heldout), pairs_filepath=str(pairs), num_folds=10,
                                            pairs_per_fold=pairs_per_fold, seed=seed))
    return pairs


def recipe_args(train_dir: Path, run_dir: Path, **overrides: Any):
    """train_nets.Args of RECIPE with `overrides`, writing into run_dir, checkpointing only at the end."""
    import train_nets

    settings = {**RECIPE, **overrides}
    return train_nets.Args(**settings, train_dataset_dir=str(train_dir), validate_interval=0,
                           ckpt_interval=settings["max_steps"], ckpt_path=str(run_dir / "ckpt"),
                           summary_path=str(run_dir / "summary"), log_file_path=str(run_dir / "logs"))


def heldout_accuracy(model: str, heldout: Path, pairs: Path, out: Path) -> float:
    """Accuracy-Flip of `model` (a checkpoint or .keras file) on the held-out pairs, 10-fold."""
    import eval_ckpt_file

    return eval_ckpt_file.evaluate_checkpoints(eval_ckpt_file.Args(
        ckpt_file=model, ckpt_index_list=[], eval_dataset=str(heldout), eval_pair=str(pairs), batch_size=64,
        output_dir=str(out)))[0]["accuracy_mean"]


def untrained_accuracy(settings, heldout: Path, pairs: Path, out: Path) -> float:
    """The same network before training: built from the same Args (seed), saved and evaluated like the trained one."""
    from nets.spec import NetworkSpec

    out.mkdir(parents=True, exist_ok=True)
    NetworkSpec.from_mapping(settings.to_dict()).build().save(out / "untrained.keras")
    return heldout_accuracy(str(out / "untrained.keras"), heldout, pairs, out)


def train_measured(settings) -> dict:
    """train_nets.train(settings) plus its wall and process CPU seconds (every thread of this process)."""
    import train_nets

    wall, cpu = time.perf_counter(), time.process_time()
    summary = train_nets.train(settings)
    return {**summary, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def run(args: Args, **overrides: Any) -> dict:
    """Trains RECIPE + overrides on ORL's training identities and evaluates the held-out ones; returns the figures."""
    root = Path(args.output_dir)
    faces = check_orl_folders(Path(args.orl_dir))
    if args.align:
        faces = align_faces(faces, root / "aligned")
    train_dir, heldout = split_identities(faces, root / "orl", args.num_train_identities)
    pairs = write_heldout_pairs(heldout, root / "pairs.txt", args.pairs_per_fold, args.pairs_seed)
    settings = recipe_args(train_dir, root / "run", **overrides)
    result: dict[str, Any] = {}
    if args.untrained:
        result["untrained"] = untrained_accuracy(settings, heldout, pairs, root / "eval_untrained")
    trained = train_measured(settings)
    result.update(trained=heldout_accuracy(trained["checkpoint"], heldout, pairs, root / "eval"),
                  step=trained["step"], wall_s=trained["wall_s"], cpu_s=trained["cpu_s"])
    return result


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """This script's items (its --key=value, --help, --debug) and the others, train_nets --key=value overrides."""
    own = [item for item in argv if item in ("--help", "-h", "--debug")
           or (item.startswith("--") and item[2:].split("=", 1)[0] in Args.fields())]
    return own, [item for item in argv if item not in own]


def train_overrides(items: list[str]) -> dict[str, Any]:
    """train_nets --key=value items parsed with train_nets' rules: {key: value} of the keys given."""
    import train_nets

    parsed = train_nets.Args.from_cli(items)
    return {key: getattr(parsed, key) for key in {item[2:].split("=", 1)[0] for item in items}}


def main(args: Args, overrides: dict[str, Any]) -> dict:
    result = run(args, **overrides)
    log.info("ORL s%d-s%d held out, overrides %s: Accuracy-Flip %.4f%s after %d steps, %.0f s wall, %.0f s CPU",
             args.num_train_identities + 1, NUM_IDENTITIES, overrides or "none", result["trained"],
             f" (untrained {result['untrained']:.4f})" if "untrained" in result else "", result["step"],
             result["wall_s"], result["cpu_s"])
    return result


def cli() -> NoReturn:
    # The overrides are parsed inside run_script's main, so that a bad one is one line naming it, like a bad own key.
    own, train_items = split_argv(sys.argv[1:])
    run_script(Args, lambda args: print_figures(args, train_overrides(train_items)), own)


def print_figures(args: Args, overrides: dict[str, Any] | None = None) -> int:
    """The command line's main: the figures go to stdout as one line of key=value pairs, for tables."""
    result = main(args, overrides or {})
    sys.stdout.write(" ".join(f"{key}={value:.4f}" if isinstance(value, float) else f"{key}={value}"
                              for key, value in result.items()) + "\n")
    return 0


if __name__ == "__main__":
    cli()
