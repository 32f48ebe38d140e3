import json
import os
import stat

import pandas as pd
import pytest

from montessori.io import DataError, atomic_path, read_records, write_parquet
from montessori.pool import pool_seeds, reference_set, seed_text


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_seed_text_appends_input():
    assert seed_text(" Translate ", "bonjour ") == "Translate bonjour"
    assert seed_text("Say hi", "") == "Say hi"


def test_pool_drops_empty_and_duplicates(tmp_path):
    a = write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": "Name a color.", "input": ""},
            {"instruction": "  ", "input": ""},
            {"instruction": "name a  COLOR.", "input": ""},  # duplicate after normalisation
            {"instruction": "Sum these.", "input": "1 2"},
        ],
    )
    b = tmp_path / "b.json"
    b.write_text(json.dumps([{"instruction": "Name a color.", "output": "red"}, {"instruction": "Be brief."}]))
    seeds = pool_seeds([a, b], seed=0)
    assert sorted(seeds["seed_text"]) == ["Be brief.", "Name a color.", "Sum these. 1 2"]
    assert seeds["seed_id"].is_unique


def test_pool_is_deterministic_and_ids_are_stable(tmp_path):
    records = [{"instruction": f"Task number {i}.", "input": ""} for i in range(50)]
    path = write_jsonl(tmp_path / "s.jsonl", records)
    first, again, other = pool_seeds([path], 0), pool_seeds([path], 0), pool_seeds([path], 1)
    pd.testing.assert_frame_equal(first, again)
    assert first["seed_text"].tolist() != other["seed_text"].tolist()
    # ids follow the text, not the position
    assert dict(zip(first["seed_text"], first["seed_id"])) == dict(zip(other["seed_text"], other["seed_id"]))


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "ok"}\n{"instruction": "broken"\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid JSON"):
        pool_seeds([path], 0)


def test_missing_field_names_the_record(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"instruction": "ok"}, {"prompt": "no instruction"}])
    with pytest.raises(DataError, match=r"s.jsonl:2: missing string field 'instruction'"):
        read_records(path, required=("instruction",))


def test_real_seed_files_pool():
    from tests.conftest import ROOT

    seeds = pool_seeds([ROOT / "data/seed_pool/alpaca_gpt4_en_demo_999.json"], 0)
    assert 900 < len(seeds) <= 999 and seeds["seed_id"].is_unique


def test_reference_set_takes_first_n_and_rejects_empty(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps([{"instruction": f"q{i}", "response": f"a{i}"} for i in range(5)]))
    assert reference_set(path, 3)["instruction"].tolist() == ["q0", "q1", "q2"]
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(DataError, match="reference set is empty"):
        reference_set(empty, 3)


def test_failed_write_leaves_no_partial_output(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_parquet(pd.DataFrame({"a": [1]}), target)
    assert pd.read_parquet(target)["a"].tolist() == [1]


def test_atomic_outputs_get_the_umask_mode_not_the_temp_files_private_one(tmp_path):
    # Shared cluster filesystems: other users must be able to read results written through atomic_path.
    old = os.umask(0o022)
    try:
        write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "table.parquet")
        with atomic_path(tmp_path / "model", is_dir=True) as tmp:
            (tmp / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "table.parquet").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
