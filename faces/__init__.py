"""Any model on faces: embed a folder, compare two photos, search a probe in a gallery (recognize.py is the command).

    from faces import FaceEmbedder, compare_embeddings, search, threshold_from_report
    embedder = FaceEmbedder.load("output/ckpt/best/embedding.keras")      # anything models.load_embedding_model reads
    gallery = embedder.embed_folder("photos/")                              # identity folders or flat; saved with .save
    threshold = threshold_from_report("output/eval/report.json").threshold  # the 10-fold protocol's, a squared distance
    result = compare_embeddings(embedder.embed_photo("a.jpg"), embedder.embed_photo("b.jpg"), threshold)
    matches = search(embedder.embed_photo("probe.jpg"), gallery, top_k=5)

* faces.images: the images of a folder, and an image -> the face crop of the model's input size (align/ when needed);
* faces.embedder: FaceEmbedder, through the evaluator's embedding code (eval.embeddings);
* faces.embeddings_file: FaceEmbeddings, the .npz embeddings file;
* faces.matching: compare_embeddings, threshold_from_report (eval_ckpt_file.py's report.json), search.

1:N identification evaluation is eval.identification (identify.py is its command).
"""

from faces.embedder import FaceEmbedder
from faces.embeddings_file import FaceEmbeddings
from faces.images import FaceCropper, NoFaceError, list_face_images
from faces.matching import Comparison, Match, ReportThreshold, compare_embeddings, search, threshold_from_report

__all__ = ["Comparison", "FaceCropper", "FaceEmbedder", "FaceEmbeddings", "Match", "NoFaceError", "ReportThreshold",
           "compare_embeddings", "list_face_images", "search", "threshold_from_report"]
