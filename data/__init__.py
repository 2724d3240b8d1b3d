"""Input formats (image folders, MXNet RecordIO, TFRecords, .bin sets, synthetic identities) -> tf.data."""
