"""Face alignment: MTCNN detection and the 5-point similarity warp onto the ArcFace template.

* `align.warp`: the ArcFace 112x112 template (scaled for other sizes), the least-squares similarity transform, the
  warp, and the seed's box + margin crop.
* `align.detector`: `FaceDetector` (the `mtcnn` package with the seed's settings), the seed's choice of the central
  face, and a check of where the eyes of an aligned face are found again.
* `align/align_dataset_mtcnn.py`: the script that aligns a folder of class folders with worker processes.
"""
