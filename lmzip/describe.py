"""`lmzip info`: every header field of a model container or a compressed file (no torch).

Reading a file's fields needs only the format modules, so `lmzip info` answers without loading
torch or the engine.
"""

from __future__ import annotations

import math
import os
from collections import Counter

from lmzip import container, stream, transform
from lmzip.errors import FormatError, LmzipError


def info(path: str | None) -> dict:
    """Every header field of a model container or compressed file, keyed by spec field name.

    path=None describes the default model shipped in the package. Compressed files are read to
    the end (every record and payload checksum is verified) to summarise the chunks; the
    decoded content is not checked, which needs the model.
    """
    described_default = path is None
    if path is None:
        default = container.default_model_path()
        if not default.is_file():
            raise LmzipError(f"no default model at {default} in this build; pass a FILE")
        path = str(default)
    elif not os.path.exists(path):
        path = str(container.shipped_models().get(path) or path)
    with open(path, "rb") as f:
        magic = f.read(8)
        size = os.fstat(f.fileno()).st_size
        if magic == container.MAGIC:
            out = {"kind": "model", "size_bytes": size}
            out.update(container.read_model_header(path))
            # the whole file too (SHA-256, tensors, model_id; ~0.1 s for a golf model): info
            # must not call a damaged model fine just because its header is intact
            container.load_model(path)
            out["tensor_codec"] = {0: "none", 1: "zstd"}[out["tensor_codec"]]
            out["model_id"] = out.pop("model_id")  # keep the id next to the sizes when printed
            tensors = out["tensors"]
            out["n_params"] = sum(math.prod(t["shape"]) for t in tensors)
            out["tensor_kinds"] = dict(Counter(t["kind"] for t in tensors))
            if described_default:
                out["shipped_models"] = {n: str(p) for n, p in container.shipped_models().items()}
            return out
        if magic != stream.MAGIC:
            raise FormatError(f"{path}: not an lmzip model or compressed file (unknown magic)")
        f.seek(0)
        try:
            reader = stream.StreamReader(f)
            methods = dict.fromkeys(stream.METHODS.values(), 0)
            transforms = dict.fromkeys(transform.NAMES.values(), 0)
            tokens = payload = 0
            for record, data in reader:
                methods[stream.METHODS[record.method]] += 1
                transforms[transform.NAMES[record.transform]] += 1
                tokens += record.n_tokens
                payload += record.payload_size
        except FormatError as e:
            raise type(e)(f"{path}: {e}") from None
    h = reader.header
    out = {"kind": "compressed", "size_bytes": size, **h.to_dict()}
    out["chunks"] = methods
    out["chunk_transforms"] = transforms
    out["n_tokens"] = tokens
    out["payload_bytes"] = payload
    out["ratio"] = round(h.original_size / size, 4)
    out["bits_per_byte"] = round(8 * size / h.original_size, 4) if h.original_size else None
    return out
