"""``adir query-index``: print the K nearest corpus images of one image.

Example::

    adir query-index --index file:///data/index --image photo.png -k 20 [--mode clip|random|mse]
"""

from __future__ import annotations

import argparse
import json

from index_builder.retrieval import MODES, Retriever
from restore_core.images import read_image


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index folder URI written by adir build-index")
    p.add_argument("--image", required=True, help="query image path or URI")
    p.add_argument("-k", type=int, default=20, help="number of neighbours")
    p.add_argument("--mode", default="clip", choices=MODES)
    p.add_argument("--seed", type=int, default=0, help="seed of mode=random")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def main(args: argparse.Namespace) -> int:
    retriever = Retriever.load(args.index, device=args.device)
    found = retriever.neighbours(read_image(args.image), args.k, mode=args.mode, seed=args.seed)
    for rank, n in enumerate(found, 1):
        if args.json:
            print(json.dumps({"rank": rank, **n}))
        else:
            print(f"{rank:3d}  {n['distance']:.4f}  {n['image_id']}  {n['uri']}")
    return 0
