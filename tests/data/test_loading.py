"""Dataset specs: local files of every kind, stage outputs, the hub offline, transforms, hh-rlhf."""

import gzip
import json

import datasets
import pytest

from align.data import fingerprint, load_dataset, write_data_card
from align.data.hh_rlhf import convert_row
from align.errors import AlignError

ROWS = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}, {"prompt": "p3", "completion": "c3"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_json_jsonl_csv_parquet_and_gz(tmp_path):
    datasets.Dataset.from_list(ROWS).to_parquet(tmp_path / "d.parquet")
    datasets.Dataset.from_list(ROWS).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d.json").write_text(json.dumps(ROWS))
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS))
    for name in ("d.parquet", "d.csv", "d.json", "d.jsonl", "d.jsonl.gz"):
        data = load_dataset({"path": str(tmp_path / name)}, name=name)
        assert data["prompt"] == ["p1", "p2", "p3"], name


def test_several_files_split_slicing_and_transforms(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", ROWS[:2]), write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    assert len(load_dataset({"path": [a, b]}, name="x")) == 3
    assert load_dataset({"path": [a, b], "split": "train[:2]"}, name="x")["prompt"] == ["p1", "p2"]
    data = load_dataset({"path": a, "rename": {"completion": "answer"}, "limit": 1}, name="x")
    assert data.column_names == ["prompt", "answer"] and len(data) == 1
    shuffled = load_dataset({"path": [a, b], "shuffle": True, "seed": 1}, name="x")
    assert sorted(shuffled["prompt"]) == ["p1", "p2", "p3"]


def upper(row):
    return {"prompt": row["prompt"].upper()}


def test_map_with_a_user_function(tmp_path):
    data = load_dataset({"path": write_jsonl(tmp_path / "a.jsonl", ROWS), "map": f"{__name__}:upper"}, name="x")
    assert data["prompt"] == ["P1", "P2", "P3"]


def test_text_files_by_line_and_paragraph(tmp_path):
    (tmp_path / "t.txt").write_text("one\ntwo\n\nthree\n")
    assert len(load_dataset({"path": str(tmp_path / "t.txt"), "sample_by": "line"}, name="t")) >= 3
    paragraphs = load_dataset({"path": str(tmp_path / "t.txt")}, name="t")["text"]
    assert len(paragraphs) == 2 and paragraphs[0].startswith("one")


def test_stage_output(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "stage" / "dataset"))
    assert len(load_dataset({"stage_dir": str(tmp_path / "stage")}, name="prefs")) == 3
    with pytest.raises(AlignError, match="has not produced a dataset"):
        load_dataset({"stage_dir": str(tmp_path / "other")}, name="prefs")


def test_hub_offline_gives_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AlignError, match=r"datasets.uf: could not load hub dataset 'org/name'.*path: instead"):
        load_dataset({"hub": "org/name", "split": "train"}, name="datasets.uf")


@pytest.mark.parametrize("spec, message", [
    ({"path": "missing.jsonl"}, "missing.jsonl does not exist"),
    ({"path": "a.jsonl", "hub": "x"}, "exactly one of builtin, path, hub or stage_dir"),
    ({"path": "a.jsonl", "limt": 3}, "Did you mean 'limit'"),
    ({"path": "a.xml"}, "cannot read .xml"),
    ({"path": "a.jsonl", "convert": "ultrafeedback"}, "unknown conversion"),
])
def test_bad_specs(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(AlignError, match=message):
        load_dataset(spec, name="datasets.d")


def test_mixed_file_kinds(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ROWS)
    datasets.Dataset.from_list(ROWS).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(AlignError, match="mix formats"):
        load_dataset({"path": [a, str(tmp_path / "b.csv")]}, name="d")


def test_fingerprint_follows_file_contents(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    before = fingerprint({"path": path})
    assert fingerprint({"path": path}) == before
    write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    assert fingerprint({"path": path}) != before


def test_hh_rlhf_split_at_the_last_assistant_turn_not_the_common_prefix():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
    row = convert_row(prompt + "\n\nAssistant: I think a good joke is this one.",
                      prompt + "\n\nAssistant: I think not.")
    assert row["prompt"] == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "Tell me a joke"}]
    assert row["chosen"][0]["content"] == "I think a good joke is this one."
    assert row["rejected"][0]["content"] == "I think not."
    assert convert_row("\n\nHuman: a\n\nAssistant: x", "\n\nHuman: b\n\nAssistant: y") is None


def test_hh_rlhf_real_rows(shared_data):
    path = shared_data / "hh-rlhf-harmless-test" / "test.jsonl.gz"
    raw = [json.loads(line) for line in gzip.open(path, "rt")]
    data = load_dataset({"path": str(path), "convert": "hh-rlhf"}, name="hh")
    assert len(data) > 2250
    first = data[0]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["prompt"][-1]["content"] == "okay some of these do not have anything to do with pens"
    assert raw[0]["chosen"].endswith(first["chosen"][0]["content"])
    assert raw[0]["rejected"].endswith(first["rejected"][0]["content"])
    for i in (1, 500):  # every turn of the prompt appears, in order, in the original dialogue
        original = raw[i]["chosen"]
        position = 0
        for message in convert_row(raw[i]["chosen"], raw[i]["rejected"])["prompt"]:
            position = original.index(message["content"][:40], position)


def test_data_card(tmp_path, tiny_tokenizer):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(4)]
    path = write_data_card(datasets.Dataset.from_list(rows), tmp_path, name="chat", spec={"path": "chat.jsonl"},
                           tokenizer=tiny_tokenizer, notes="made by hand")
    text = path.read_text()
    assert path.name == "data_card_chat.md"
    for needle in ("Rows**: 4", "conversational", "Tokens**", "made by hand", "Row 0", "Row 2", "Licence"):
        assert needle in text, needle
