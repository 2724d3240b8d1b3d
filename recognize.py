"""Any model on faces: embed a folder into an embeddings file, compare two photos, search a probe in a gallery.

    python recognize.py --job=embed --input_model=model.keras --input_dir=photos --embeddings_file=gallery.npz
    python recognize.py --job=compare --input_model=model.keras --first_photo=a.jpg --second_photo=b.jpg \
        --threshold_report=output/eval/report.json
    python recognize.py --job=search --input_model=model.keras --probe=someone.jpg --gallery=gallery.npz --top_k=5

The model is anything models.load_embedding_model reads (a .keras file, a training checkpoint or run folder, a seed
TF1 checkpoint, one of insightface's released ONNX / backbone.pth / MXNet models). Photos not at the model's input size are aligned as align/align_dataset_mtcnn.py aligns them (MTCNN,
the 5-point ArcFace warp), unless `aligned` says they are aligned crops already (then they are only resized). Scores
are cosine similarities; the decision of a comparison uses the 10-fold protocol's squared-distance threshold (from an
eval_ckpt_file.py report, or given), logged in both forms (d = 2 - 2 cos).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

from config import Choices, Config, OptionalPath, PositiveInt, Range, RequiredPath, run_script

if TYPE_CHECKING:
    from faces import Comparison, FaceEmbedder, FaceEmbeddings, Match

log = logging.getLogger("recognize")


class Args(Config):
    # "embed": input_dir -> embeddings_file; "compare": first_photo vs second_photo; "search": probe in gallery
    job: Annotated[str, Choices("embed", "compare", "search")] = "embed"
    # A .keras file, a training checkpoint (prefix, or a run folder for its latest), a seed TF1 checkpoint prefix, or an
    # insightface release (.onnx, backbone.pth, model-0000.params).
    input_model: RequiredPath = "./output/ckpt/best/embedding.keras"
    # "BGR" or "RGB": the order the network was trained with; None: the one recorded with the model, else the seed's
    channel_order: Annotated[str, Choices("BGR", "RGB")] | None = None
    # "sum" (image + mirror, as Accuracy-Flip), "none", or "concat"; use the flip the threshold was chosen with
    flip: Annotated[str, Choices("sum", "none", "concat")] = "sum"
    aligned: bool = False  # the photos are aligned face crops: resize them to the model's input size, no detection
    batch_size: PositiveInt = 32  # images per forward pass
    # --- embed ---
    input_dir: OptionalPath = ""  # folder of photos: one folder per identity, or flat (each photo its own identity)
    embeddings_file: RequiredPath = "./output/embeddings.npz"  # the embeddings file written (replaced if it exists)
    # --- compare ---
    first_photo: OptionalPath = ""  # the first photo
    second_photo: OptionalPath = ""  # the second photo
    # squared-distance threshold ("same" when below it; cosine = 1 - threshold / 2); None: from threshold_report
    threshold: Annotated[float, Range(0, 4)] | None = None
    threshold_report: OptionalPath = ""  # an eval_ckpt_file.py report.json: its mean best threshold over the folds
    report_set: OptionalPath = ""  # the set of threshold_report to take ("": its only one), e.g. "pairs"
    # --- search ---
    probe: OptionalPath = ""  # the photo to search for
    gallery: OptionalPath = ""  # an embeddings file (job embed) or a folder of photos, embedded now
    top_k: PositiveInt = 5  # identities listed, best first


def _required(args: Args, *keys: str) -> None:
    missing = [key for key in keys if not getattr(args, key)]
    if missing:
        raise ValueError(f"Args: job {args.job} needs {', '.join(f'--{key}=...' for key in missing)}")


def load_embedder(args: Args) -> FaceEmbedder:
    from faces import FaceEmbedder

    return FaceEmbedder.load(args.input_model, args.channel_order, flip=args.flip, aligned=args.aligned,
                             batch_size=args.batch_size)


def embed(args: Args) -> FaceEmbeddings:
    """Job "embed": every photo of input_dir -> embeddings_file; skipped photos are logged and stored in it."""
    _required(args, "input_dir")
    embeddings = load_embedder(args).embed_folder(args.input_dir)
    path = embeddings.save(args.embeddings_file)
    for source, reason in embeddings.skipped:
        log.info("skipped %s: %s", source, reason)
    log.info("wrote %d embeddings (%d identities, %d skipped) to %s", len(embeddings.paths),
             len(set(embeddings.labels)), len(embeddings.skipped), path)
    return embeddings


def _threshold(args: Args, embedder: FaceEmbedder) -> float | None:
    """args.threshold, or threshold_report's, warning when that report measured another model or feeding."""
    from faces import threshold_from_report

    if args.threshold is not None and args.threshold_report:
        raise ValueError("Args: give threshold or threshold_report, not both")
    if not args.threshold_report:
        return args.threshold
    chosen = threshold_from_report(args.threshold_report, args.report_set)
    log.info("threshold from %s (set %s): %.4f = cosine %.4f", args.threshold_report, chosen.name, chosen.threshold,
             chosen.threshold_cosine)
    model = embedder.model
    if chosen.checkpoint and Path(chosen.checkpoint).resolve() != Path(model.source).resolve():
        log.warning("the threshold was chosen for %s, not for %s: it holds only for that model", chosen.checkpoint,
                    model.source)
    for what, theirs, ours in (("flip", chosen.flip, args.flip), ("channel order", chosen.channel_order,
                                                                   model.channel_order)):
        if theirs is not None and theirs != ours:
            log.warning("the threshold was chosen with %s %s, these photos are embedded with %s", what, theirs, ours)
    return chosen.threshold


def compare(args: Args) -> Comparison:
    """Job "compare": the two photos' cosine similarity and squared distance, and the decision at the threshold."""
    _required(args, "first_photo", "second_photo")
    from faces import compare_embeddings

    embedder = load_embedder(args)
    result = compare_embeddings(embedder.embed_photo(args.first_photo), embedder.embed_photo(args.second_photo),
                                _threshold(args, embedder))
    log.info("cosine similarity %.4f, squared distance %.4f", result.cosine, result.distance)
    if result.same is not None:
        log.info("%s: squared distance %.4f %s threshold %.4f (cosine %.4f %s %.4f)",
                 "same person" if result.same else "different people", result.distance,
                 "<" if result.same else ">=", result.threshold, result.cosine, ">" if result.same else "<=",
                 result.threshold_cosine)
    return result


def _gallery(args: Args, embedder: FaceEmbedder) -> FaceEmbeddings:
    """The gallery: a folder embedded now, or an embeddings file checked against the model embedding the probe."""
    from faces import FaceEmbeddings

    if Path(args.gallery).is_dir():
        return embedder.embed_folder(args.gallery)
    gallery = FaceEmbeddings.load(args.gallery)
    model = embedder.model
    if (gallery.source, gallery.channel_order, gallery.flip) != (model.source, model.channel_order, embedder.flip):
        log.warning("%s was embedded by %s (%s, flip %s), the probe by %s (%s, flip %s): scores across models mean "
                    "nothing", args.gallery, gallery.source, gallery.channel_order, gallery.flip, model.source,
                    model.channel_order, embedder.flip)
    return gallery


def search_gallery(args: Args) -> list[Match]:
    """Job "search": the top_k gallery identities for the probe, each with its best cosine similarity."""
    _required(args, "probe", "gallery")
    from faces import search

    embedder = load_embedder(args)
    probe = embedder.embed_photo(args.probe)
    gallery = _gallery(args, embedder)
    if gallery.embeddings.shape[1] != probe.shape[0]:
        raise ValueError(f"{args.gallery}: embeddings of size {gallery.embeddings.shape[1]}, the probe's are "
                         f"{probe.shape[0]}: embed the gallery with this model and flip")
    matches = search(probe, gallery, args.top_k)
    for rank, match in enumerate(matches, start=1):
        log.info("%d. %s  cosine %.4f  (%s)", rank, match.identity, match.score, match.path)
    return matches


JOBS = {"embed": embed, "compare": compare, "search": search_gallery}


def main(args: Args) -> Any:
    return JOBS[args.job](args)


def cli() -> NoReturn:
    """The `insightface-recognize` console script: this script's command line, from any folder."""
    run_script(Args, main)


if __name__ == "__main__":
    cli()
