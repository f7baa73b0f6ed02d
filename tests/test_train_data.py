"""Training from the other two layouts: tar shards (streamed; resume bit-identical from the stored sample
offset) and a Face-MakeUpV2 JSON; train --data with a glob."""

from __future__ import annotations

import json

import pytest
import torch

from test_train import fast_config, make_records, weights_of


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The synthetic records of test_train in two records files, exported as tar shards and as V2's layout."""
    from facemakeup.data.formats import export_records

    root = tmp_path_factory.mktemp("layouts")
    recs = make_records(root / "records")
    lines = (recs / "records-00000.jsonl").read_text().splitlines(keepends=True)
    (recs / "records-00000.jsonl").write_text("".join(lines[:6]))
    (recs / "records-00001.jsonl").write_text("".join(lines[6:]))
    export_records(recs, root / "shards", "webdataset", progress=False)
    export_records(recs, root / "v2", "face-makeup-v2", progress=False)
    return {"records": recs, "shards": root / "shards", "v2": root / "v2" / "train.json"}


@pytest.mark.slow
def test_streamed_resume_is_bit_identical_to_an_uninterrupted_run(layouts, tmp_path):
    from facemakeup.train import train

    cfg = fast_config("holdout=1")
    s = train(cfg, layouts["shards"], tmp_path / "straight", max_steps=4)
    assert s["streamed"] and s["records_holdout"] == 1
    train(cfg, layouts["shards"], tmp_path / "resumed", max_steps=2)
    state = json.loads((tmp_path / "resumed" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state == {"step": 2, "sample_offset": 4}  # 2 steps x batch 2 of this process
    train(cfg, layouts["shards"], tmp_path / "resumed", max_steps=4, resume=True)
    a, b = weights_of(tmp_path / "straight" / "final"), weights_of(tmp_path / "resumed" / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x)["loss"] for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 4


def test_train_cli_on_a_v2_json_and_a_shard_glob(layouts, tmp_path):
    from click.testing import CliRunner

    from facemakeup.cli import main

    for name, data, said in (("v2", str(layouts["v2"]), "on 9 records (0 skipped)"),
                             ("glob", str(layouts["shards"] / "*.tar"), "on streamed shards")):
        res = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", data, "--out", str(tmp_path / name), "--max-steps", "1",
                                        "--set", "holdout=1", "--set", "sample_every=0", "--set", "train_batch_size=2"])
        assert res.exit_code == 0 and said in res.output, res.output
        assert (tmp_path / name / "final" / "face_adapter").is_dir()
    res = CliRunner().invoke(main, ["train", "--preset", "tiny", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "no such records folder" in res.output
