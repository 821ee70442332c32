"""``adir query-index --vector / --text``: JSON lines per (query, rank); a text query through a tiny
open_clip model with a text tower built here; an image-only embedder refused before work."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from index_builder.embedder import DEFAULT_EMBEDDER, load_embedder
from jobs import cli
from jobs.build_index import run_from_embeddings

PROMPTS = ["a red barn in the snow", "a blue car on a bridge", "two cats asleep on a sofa", "a lighthouse at night"]


def save_text_clip(out_dir, name="tiny-text-clip", seed=0):
    """A tiny open_clip CLIP with a real text tower (CLIP BPE vocabulary), saved as config JSON
    + state dict and loaded back through ``create_model_and_transforms(name, pretrained=path)``."""
    import open_clip
    from safetensors.torch import save_file

    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                           "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1}}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(out_dir / f"{name}.json")
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "model.safetensors"))
    return {"model": name, "pretrained": str(out_dir / "model.safetensors"), "config": str(out_dir / f"{name}.json")}


def write_shard(path, vectors, ids):
    pq.write_table(pa.table({"image_id": ids, "uri": [f"file:///c/{i}.png" for i in ids],
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)),
                                                                            vectors.shape[1])}), path)


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    spec = save_text_clip(root / "clip")
    emb = load_embedder(spec, device="cpu")
    assert emb.has_text
    rng = np.random.default_rng(0)
    others = rng.standard_normal((60, 16)).astype(np.float32)
    vectors = np.concatenate([emb.embed_text(PROMPTS), others / np.linalg.norm(others, axis=1, keepdims=True)])
    (root / "emb").mkdir()
    write_shard(root / "emb" / "part-00000.parquet", vectors, [f"p{i}" for i in range(len(PROMPTS))] +
                [f"o{i}" for i in range(60)])
    run_from_embeddings(str(root / "emb"), str(root / "index"), spec, kind="flat", workers=0)
    return root, vectors


def _lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_vector_query_json_lines(text_index, capsys):
    root, vectors = text_index
    np.save(root / "q.npy", vectors[[5, 2]] * 3.0)  # scale does not matter: queries are normalised
    assert cli.main(["query-index", "--index", str(root / "index"), "--vector", str(root / "q.npy"),
                     "-k", "4", "--json"]) == 0
    lines = _lines(capsys)
    assert len(lines) == 8 and set(lines[0]) == {"query", "rank", "image_id", "uri", "distance"}
    assert [(r["query"], r["rank"]) for r in lines[:5]] == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1)]
    assert lines[0]["image_id"] == "o1" and lines[4]["image_id"] == "p2" and lines[0]["distance"] < 1e-3
    assert lines[0]["uri"] == "file:///c/o1.png"
    np.save(root / "bad.npy", np.ones((2, 8), np.float32))
    assert cli.main(["query-index", "--index", str(root / "index"), "--vector", str(root / "bad.npy")]) == 2


def test_text_query_through_the_text_tower(text_index, capsys):
    root, _ = text_index
    assert cli.main(["query-index", "--index", str(root / "index"), "--text", PROMPTS[1], "-k", "3", "--json"]) == 0
    lines = _lines(capsys)
    assert len(lines) == 3 and lines[0]["image_id"] == "p1" and lines[0]["distance"] < 1e-3


def test_image_only_embedder_refuses_text_before_work(tmp_path, capsys):
    # an index folder whose embedder is the shipped, image-only one; no index files at all, so an
    # error naming the missing text tower proves nothing else was loaded first
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "embedder.json").write_text(json.dumps(DEFAULT_EMBEDDER))
    assert cli.main(["query-index", "--index", str(tmp_path / "idx"), "--text", "a barn"]) == 2
    err = capsys.readouterr().err
    assert "no text tower" in err and "adir-tiny" in err and err.count("\n") == 1
    with pytest.raises(Exception, match="no text tower"):
        load_embedder(None, device="cpu").embed_text(["a barn"])
