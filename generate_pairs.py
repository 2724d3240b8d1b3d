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
import sys

from config import Config, setup_logging
from eval.pair_sampling import sample_folds, scan_identities
from eval.pairs import write_pairs

logger = logging.getLogger("generate_pairs")


class Args(Config):
    data_dir: str = "output/aligned"  # one folder per identity holding its images (align_dataset_mtcnn.py output)
    pairs_filepath: str = "output/pairs.txt"  # the pairs file to write (replaced if it exists)
    num_folds: int = 10  # folds of the protocol (LFW: 10); evaluation folds the pairs the same way
    pairs_per_fold: int = 300  # matched pairs per fold, and as many mismatched ones (LFW: 300)
    seed: int = 313  # random seed: the same data and seed give the same file
    image_extensions: list[str] = [".png", ".jpg", ".jpeg", ".bmp"]  # files counted as images (any letter case)


def main(args: Args) -> None:
    identities = scan_identities(args.data_dir, args.image_extensions)
    pairs, per_fold = sample_folds(identities, args.num_folds, args.pairs_per_fold, args.seed)
    path = write_pairs(args.pairs_filepath, pairs, args.num_folds, per_fold)
    logger.info("wrote %d folds x (%d matched + %d mismatched) pairs from %d identities of %s to %s", args.num_folds,
                per_fold, per_fold, len(identities), args.data_dir, path)


if __name__ == "__main__":
    setup_logging()
    main(Args.from_cli(sys.argv[1:]))
