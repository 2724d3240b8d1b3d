"""Input formats (image folders, MXNet RecordIO, TFRecords, .bin sets, synthetic identities) -> tf.data.

Modules:
    train_data     open_train_data(source) -> TrainData: one tf.data pipeline for every training format
    augment        Augmentation: crop, colour, greyscale, blur, cutout, fixed per (seed, epoch, batch)
    image_folders  folder of identity folders (label = index of the sorted folder names)
    recordio       MXNet RecordIO (.rec/.idx/property) in pure Python: read_recordio, write_recordio
    tfrecords      the seed's TFRecord schema (image_raw, label): writer, indexed reader
    mx2tfrecords   CLI: .rec or image folders -> sharded TFRecords
    bin_dataset    InsightFace .bin verification sets: load_bin (restricted unpickler), write_bin
    synthetic      procedurally drawn face-like identities (the demo's and the tests' data); CLI
    preprocess     the seed's normalisation, (x - 127.5) / 128 in BGR or RGB order
    image_io       image file or encoded bytes -> RGB uint8 (resized, EXIF-oriented) with OpenCV; header-checked
                   first (MAX_IMAGE_PIXELS), every failure an ImageDecodeError naming the file
"""
