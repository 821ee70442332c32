"""``adir query-index``: print the K nearest corpus images of an image, of precomputed query
vectors, or of a text prompt.

* ``--image FILE`` — embedded with the index's embedder (``--mode clip|random|mse``);
* ``--vector FILE.npy`` — (D,) or (N, D) query embeddings, used as they are (L2-normalised);
  needs no embedder, so it also serves indexes built from ``--embeddings`` alone;
* ``--text "…"`` — the embedder's open_clip text tower (``encode_text`` with open_clip's
  tokenizer; ADIR §4.4 retrieves by the prompt's text embedding). An embedder without a
  usable text tower (the shipped one) is refused before the index is loaded.

With ``--json``: one line per (query, rank): ``query``, ``rank``, ``image_id``, ``uri``,
``distance`` (φ = 2·arcsin(½‖a − b‖), ``index_builder.index.spherical_distance``).

Examples::

    adir query-index --index file:///data/index --image photo.png -k 20 [--mode clip|random|mse]
    adir query-index --index file:///data/index --vector queries.npy -k 20 --json
    adir query-index --index file:///data/index --text "a red barn in snow" -k 20 --json
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np

from index_builder.retrieval import (
    MODES,
    Retriever,
    load_index,
    recorded_embedder,
    search_vectors,
)
from restore_core import storage
from restore_core.errors import InputError


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index folder URI written by adir build-index")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", help="query image path or URI")
    q.add_argument("--vector", help="query embeddings: a .npy of shape (D,) or (N, D)")
    q.add_argument("--text", help="a text query (needs an embedder with a text tower)")
    p.add_argument("-k", type=int, default=20, help="number of neighbours")
    p.add_argument("--mode", default="clip", choices=MODES, help="--image only")
    p.add_argument("--seed", type=int, default=0, help="seed of mode=random")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def _read_vectors(uri: str) -> np.ndarray:
    try:
        x = np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"--vector {uri} is not a .npy array: {exc}") from None
    x = np.asarray(x, np.float32)
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2 or not np.isfinite(x).all() or (np.linalg.norm(x, axis=1) == 0).any():
        raise InputError(f"--vector {uri} must hold finite, non-zero (D,) or (N, D) vectors; got shape {x.shape}")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _print(found: list[list[dict]], as_json: bool) -> None:
    for qi, rows in enumerate(found):
        for rank, n in enumerate(rows, 1):
            if as_json:
                print(json.dumps({"query": qi, "rank": rank, "image_id": n["image_id"], "uri": n["uri"],
                                  "distance": n["distance"]}))
            else:
                print(f"{qi:3d} {rank:3d}  {n['distance']:.4f}  {n['image_id']}  {n['uri']}")


def main(args: argparse.Namespace) -> int:
    if args.k <= 0:
        raise InputError(f"-k must be > 0, got {args.k}")
    if args.vector:
        x = _read_vectors(args.vector)
        index = load_index(args.index)
        if x.shape[1] != index.dim:
            raise InputError(f"--vector {args.vector} has dimension {x.shape[1]} but the index has {index.dim}")
        _print(search_vectors(index, x, args.k), args.json)  # no embedder: the vectors are the queries
        return 0
    if args.text is not None:
        from index_builder.embedder import load_embedder

        embedder = load_embedder(recorded_embedder(args.index), device=args.device)
        if not embedder.has_text:  # before the index is loaded
            raise InputError(f"index {args.index}: its embedder {embedder.spec['model']} has no text tower "
                             "(image-only), so it cannot answer a text query")
        index = load_index(args.index)
        if index.dim != embedder.dim:
            raise InputError(f"embedder {embedder.spec['model']} gives {embedder.dim}-d vectors but the index has "
                             f"dimension {index.dim}")
        _print(search_vectors(index, embedder.embed_text([args.text]), args.k), args.json)
        return 0
    from restore_core.images import read_image

    retriever = Retriever.load(args.index, device=args.device)
    _print([retriever.neighbours(read_image(args.image), args.k, mode=args.mode, seed=args.seed)], args.json)
    return 0
