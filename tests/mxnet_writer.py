"""Runs inside the mxnet 1.9.1 side venv (tests/side_venv.py), never in ours: writes and reads files with mxnet itself.

    python mxnet_writer.py rec SPEC OUT   writes OUT/mx.rec + OUT/mx.idx in InsightFace's layout with
                                          mxnet.recordio, and OUT/result.pickle: mxnet's decode of every image and,
                                          when SPEC names `ours`, every record of that file as mxnet reads it.
    python mxnet_writer.py bin SPEC OUT   writes OUT/mx.bin (and OUT/mx_protocol2.bin) as InsightFace's lfw2pack.py
                                          does, and OUT/result.pickle: mxnet's decode of every image and, when SPEC
                                          names `ours`, that .bin loaded as InsightFace's load_bin does.

SPEC is a JSON file; result.pickle holds only Python builtins (arrays as (shape, bytes)), so numpy 2 reads it.
"""

import json
import pickle
import sys
from pathlib import Path

import mxnet as mx


def decoded(encoded):
    """mxnet's own decode (its bundled OpenCV), RGB uint8 HWC, as InsightFace's loaders call it."""
    array = mx.image.imdecode(encoded).asnumpy()
    return array.shape, array.tobytes()


def write_rec(spec, out):
    """Images at keys 1..A-1, identity records A..B-1 with [first image, end image), then record 0 = [A, B]
    (written last, as InsightFace's face2rec2.py does once the ranges are known)."""
    images = [(Path(item["file"]).read_bytes(), item["label"]) for item in spec["images"]]
    writer = mx.recordio.MXIndexedRecordIO(str(out / "mx.idx"), str(out / "mx.rec"), "w")
    for key, (body, label) in enumerate(images, start=1):
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, label, key, 0), body))
    end_image = len(images) + 1
    for key, (first, end) in enumerate(spec["identities"], start=end_image):
        writer.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, [float(first), float(end)], 0, 0), b""))
    end_identity = end_image + len(spec["identities"])
    writer.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [float(end_image), float(end_identity)], 0, 0),
                                         b""))
    writer.close()
    return {"decoded": [decoded(body) for body, _ in images]}


def read_rec(path):
    """Every record of `path` as mxnet reads it: by key through the .idx, and sequentially without it."""
    reader = mx.recordio.MXIndexedRecordIO(str(Path(path).with_suffix(".idx")), str(path), "r")
    by_key = {}
    for key in reader.keys:
        header, body = mx.recordio.unpack(reader.read_idx(key))
        labels = [float(value) for value in header.label] if header.flag > 0 else [float(header.label)]
        by_key[int(key)] = (int(header.flag), labels, int(header.id), int(header.id2), body)
    reader.close()
    sequential = mx.recordio.MXRecordIO(str(path), "r")
    count = 0
    while sequential.read() is not None:
        count += 1
    sequential.close()
    return {"by_key": by_key, "sequential_count": count}


def write_bin(spec, out):
    """lfw2pack.py: the encoded file bytes and a list of bools, pickled with the highest protocol (and 2, as the
    Python-2 era files were)."""
    bins = [Path(name).read_bytes() for name in spec["images"]]
    for name, protocol in (("mx.bin", pickle.HIGHEST_PROTOCOL), ("mx_protocol2.bin", 2)):
        with open(out / name, "wb") as stream:
            pickle.dump((bins, list(spec["issame"])), stream, protocol=protocol)
    return {"decoded": [decoded(body) for body in bins]}


def load_bin(path):
    """InsightFace's load_bin: pickle.load(encoding='bytes'), then mx.image.imdecode of every image."""
    with open(path, "rb") as stream:
        bins, issame = pickle.load(stream, encoding="bytes")
    return {"decoded": [decoded(body) for body in bins], "issame": [bool(flag) for flag in issame]}


def main(mode, spec_path, out):
    spec = json.loads(Path(spec_path).read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = write_rec(spec, out) if mode == "rec" else write_bin(spec, out)
    if spec.get("ours"):
        result["ours"] = read_rec(spec["ours"]) if mode == "rec" else load_bin(spec["ours"])
    with open(out / "result.pickle", "wb") as stream:
        pickle.dump(result, stream, protocol=4)


if __name__ == "__main__":
    main(*sys.argv[1:])
