"""1:N identification evaluation of any model on a folder of identity folders: rank-1 / rank-5, CMC, open-set TPIR.

    python identify.py --input_model=model.keras --data_dir=aligned/heldout --aligned=True --output_dir=output/identify

Each identity puts `gallery_per_identity` of its images (drawn with `seed`) into the gallery and the others into the
probes; `left_out_fraction` of the identities (drawn with `seed`) stay out of the gallery, so that their images are
non-mated probes for the open-set numbers (TPIR at FPIR 1e-2 and 1e-1). Scores are cosine similarities of the
flip-summed L2-normalised embeddings, an identity's score its best gallery image's (the conventions: eval.identification).
Photos not at the model's input size are aligned with align/ unless `aligned`; those without a face are skipped and
listed. Instead of input_model + data_dir, an embeddings file of `recognize.py --job=embed` can be evaluated. Writes
report.json and cmc.png into output_dir.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

from config import Choices, Config, Length, OptionalPath, PositiveInt, Range, RequiredPath, run_script

if TYPE_CHECKING:
    from faces import FaceEmbeddings

log = logging.getLogger("identify")


class Args(Config):
    # A .keras file, a training checkpoint (prefix, or a run folder for its latest), a seed TF1 checkpoint prefix, or an
    # insightface release (.onnx, backbone.pth, model-0000.params).
    input_model: OptionalPath = "./output/ckpt/best/embedding.keras"
    data_dir: OptionalPath = ""  # one folder per identity holding its photos
    # instead of input_model + data_dir: an embeddings file written by recognize.py --job=embed
    embeddings_file: OptionalPath = ""
    # "BGR" or "RGB": the order the network was trained with; None: the one recorded with the model, else the seed's
    channel_order: Annotated[str, Choices("BGR", "RGB")] | None = None
    flip: Annotated[str, Choices("sum", "none", "concat")] = "sum"  # "sum" (image + mirror), "none", or "concat"
    aligned: bool = False  # the photos are aligned face crops: resize them to the model's input size, no detection
    batch_size: PositiveInt = 32  # images per forward pass
    # --- protocol ---
    gallery_per_identity: PositiveInt = 1  # images of each identity in the gallery; the others are probes
    # fraction of the identities kept out of the gallery: their images are the non-mated (open-set) probes
    left_out_fraction: Annotated[float, Range(0, 1, high_open=True)] = 0.2
    seed: Annotated[int, Range(0, 2**32 - 1)] = 0  # the same data and seed give the same split
    max_rank: Annotated[int, Range(1, 10_000)] = 20  # length of the CMC curve
    # false positive identification rates at which TPIR is reported
    fpir_targets: Annotated[list[float], Range(0, 1, low_open=True, high_open=True), Length(1)] = [0.01, 0.1]
    output_dir: RequiredPath = "./output/identify"  # report.json and cmc.png


def load_embeddings(args: Args) -> FaceEmbeddings:
    """The embeddings to evaluate: args.embeddings_file, or data_dir embedded by input_model."""
    from faces import FaceEmbedder, FaceEmbeddings

    if bool(args.embeddings_file) == bool(args.data_dir):
        raise ValueError("Args: give data_dir (with input_model) or embeddings_file, one of the two")
    if args.embeddings_file:
        return FaceEmbeddings.load(args.embeddings_file)
    if not args.input_model:
        raise ValueError("Args: data_dir needs input_model")
    if not Path(args.data_dir).is_dir():
        raise FileNotFoundError(f"Args: data_dir {args.data_dir!r} is not a folder")
    embedder = FaceEmbedder.load(args.input_model, args.channel_order, flip=args.flip, aligned=args.aligned,
                                 batch_size=args.batch_size)
    return embedder.embed_folder(args.data_dir)


def identify(args: Args) -> dict:
    """Runs the protocol, writes report.json and cmc.png into output_dir, logs the numbers; returns the report."""
    from eval.identification import evaluate_identification, identification_report, split_gallery_probes
    from eval.report import plot_cmc, write_json_report

    faces = load_embeddings(args)
    split = split_gallery_probes(faces.labels, args.gallery_per_identity, args.left_out_fraction, args.seed)
    result = evaluate_identification(faces.embeddings, faces.labels, split, args.fpir_targets, args.max_rank)
    name = Path(args.embeddings_file).stem if args.embeddings_file else Path(args.data_dir).name
    report = identification_report(result, name, faces.paths, faces.labels)
    output_dir = Path(args.output_dir)
    report.update(model=faces.source, channel_order=faces.channel_order, flip=faces.flip,
                  data=args.embeddings_file or args.data_dir, gallery_per_identity=args.gallery_per_identity,
                  left_out_fraction=args.left_out_fraction, seed=args.seed,
                  left_out_identities=split.left_out_identities,
                  skipped=[{"path": path, "reason": reason} for path, reason in faces.skipped],
                  files={"json": str(output_dir / "report.json"), "cmc": str(output_dir / "cmc.png")})
    plot_cmc(output_dir / "cmc.png", [report])
    write_json_report(output_dir / "report.json", report)
    log.info("[%s] gallery: %d identities (%d images); probes: %d mated, %d non-mated", name,
             report["num_gallery_identities"], report["num_gallery_images"], report["num_mated_probes"],
             report["num_non_mated_probes"])
    log.info("[%s] rank-1: %.5f rank-5: %.5f", name, report["rank_1"], report["rank_5"])
    for point in report["open_set"]:
        log.info("[%s] TPIR@FPIR=%g: %.5f (threshold cosine %.4f, FPIR reached %.5f)%s", name, point["fpir_target"],
                 point["tpir"], point["threshold"], point["fpir"],
                 "" if point["measurable"] else " not measurable: too few non-mated probes")
    log.info("report: %s (CMC curve %s)", report["files"]["json"], report["files"]["cmc"])
    return report


def main(args: Args) -> None:
    identify(args)


def cli() -> NoReturn:
    """The `insightface-identify` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
