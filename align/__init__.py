"""Face alignment: MTCNN detection and the 5-point similarity warp onto the ArcFace template."""
