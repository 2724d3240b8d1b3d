"""Identity folders -> a pairs.txt for the 10-fold verification protocol (LFW layout, explicit file names).

Run:  python generate_pairs.py --data_dir=output/aligned --pairs_filepath=output/pairs.txt

The input is one folder per identity, e.g. the output of align/align_dataset_mtcnn.py (<data_dir>/<class>/<name>.png).
The output starts with the header `num_folds<TAB>pairs_per_fold`; then each fold lists `pairs_per_fold` matched lines
`name<TAB>file1<TAB>file2` followed by as many mismatched lines `name1<TAB>file1<TAB>name2<TAB>file2`. File names are
written with their extension (the fork's explicit format), because aligned images are not numbered as LFW's are;
eval.pairs.read_pairs reads both. No pair appears twice, no image is paired with itself, and the same data and seed
give the same file.
"""

from __future__ import annotations

import logging
from typing import Annotated, NoReturn

from config import Config, Length, PositiveInt, Range, RequiredPath, run_script
from eval.pair_sampling import sample_folds, scan_identities
from eval.pairs import write_pairs

log = logging.getLogger("generate_pairs")


class Args(Config):
    # one folder per identity holding its images (align_dataset_mtcnn.py output)
    data_dir: RequiredPath = "output/aligned"
    pairs_filepath: RequiredPath = "output/pairs.txt"  # the pairs file to write (replaced if it exists)
    num_folds: PositiveInt = 10  # folds of the protocol (LFW: 10); evaluation folds the pairs the same way
    pairs_per_fold: PositiveInt = 300  # matched pairs per fold, and as many mismatched ones (LFW: 300)
    seed: Annotated[int, Range(0, 2**32 - 1)] = 313  # random seed: the same data and seed give the same file
    # files counted as images (any letter case)
    image_extensions: Annotated[list[RequiredPath], Length(1)] = [".png", ".jpg", ".jpeg", ".bmp"]


def main(args: Args) -> None:
    identities = scan_identities(args.data_dir, args.image_extensions)
    pairs, per_fold = sample_folds(identities, args.num_folds, args.pairs_per_fold, args.seed)
    path = write_pairs(args.pairs_filepath, pairs, args.num_folds, per_fold)
    log.info("wrote %d folds x (%d matched + %d mismatched) pairs from %d identities of %s to %s", args.num_folds,
                per_fold, per_fold, len(identities), args.data_dir, path)


def cli() -> NoReturn:
    """The `insightface-pairs` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
