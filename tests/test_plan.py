"""``adir build-index --dry-run``: an Open Images CSV streamed block by block into a shard plan,
nothing fetched, nothing written."""

import json

from test_corpus import write_openimages_csv

from index_builder.plan import plan_corpus
from jobs import cli


def test_dry_run_plans_open_images_csv_without_fetching(tmp_path, capsys):
    rows = [(f"{i:016x}", f"https://farm.example/{i}.jpg") for i in range(500)]  # unreachable: never fetched
    write_openimages_csv(tmp_path / "images.csv", rows)
    plan = plan_corpus(str(tmp_path / "images.csv"), shard_size=64, block_size=4096, url_column="OriginalURL")
    assert plan["rows"] == 500 and plan["shards"] == 8 and plan["image_bytes"] == 500 * 10  # OriginalSize = 10
    assert plan["index"]["kind"] == "flat" and plan["embedding_bytes_estimate"] > 500 * 512 * 4
    assert cli.main(["build-index", "--images", str(tmp_path / "images.csv"), "--dry-run", "--shard-size", "100"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["rows"] == 500 and printed["shards"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.csv"]
