"""Dataset specs: local files of every kind, stage outputs, the hub offline, transforms, hh-rlhf."""

import gzip
import json
from pathlib import Path

import datasets
import pytest

from align.data import DATASET_SPEC_KEYS, load_dataset, validate_dataset
from align.state import dataset_fingerprint as fingerprint
from align.errors import AlignError

ROWS = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}, {"prompt": "p3", "completion": "c3"}]
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


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
    with gzip.open(tmp_path / "d.json.gz", "wt") as f:
        f.write(json.dumps(ROWS))
    for name in ("d.parquet", "d.csv", "d.json", "d.jsonl", "d.jsonl.gz", "d.json.gz"):
        data = load_dataset({"path": str(tmp_path / name)}, name=name)
        assert data["prompt"] == ["p1", "p2", "p3"], name


def test_relative_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert len(load_dataset({"path": "d.jsonl"}, name="d")) == 3


def test_several_files_globs_split_slicing_and_transforms(tmp_path):
    a, b = write_jsonl(tmp_path / "a.jsonl", ROWS[:2]), write_jsonl(tmp_path / "b.jsonl", ROWS[2:])
    assert load_dataset({"path": [a, b]}, name="x")["prompt"] == ["p1", "p2", "p3"]
    assert load_dataset({"path": str(tmp_path / "*.jsonl")}, name="x")["prompt"] == ["p1", "p2", "p3"]
    assert load_dataset({"path": [a, b], "split": "train[:2]"}, name="x")["prompt"] == ["p1", "p2"]
    assert load_dataset({"path": [a, b], "split": "train[-1:]"}, name="x")["prompt"] == ["p3"]
    data = load_dataset({"path": a, "rename": {"completion": "answer"}, "limit": 1}, name="x")
    assert data.column_names == ["prompt", "answer"] and len(data) == 1
    shuffled = [load_dataset({"path": [a, b], "shuffle": True, "seed": s}, name="x")["prompt"] for s in range(5)]
    assert all(sorted(s) == ["p1", "p2", "p3"] for s in shuffled) and len({tuple(s) for s in shuffled}) > 1
    assert load_dataset({"path": [a, b], "shuffle": True, "seed": 3}, name="x")["prompt"] == shuffled[3]


def to_messages(row):
    return {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]}


def nothing(row):
    row["prompt"] = row["prompt"].upper()


def explode(row):
    return {"prompt": row["prompt"] + "!"} if row["prompt"] != "p2" else row["missing"]


def test_map_brings_your_own_format(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    data = load_dataset({"path": path, "map": f"{__name__}:to_messages"}, name="x")
    assert validate_dataset(data, name="x", expected="conversational") == "conversational"
    assert data[2]["messages"][1] == {"role": "assistant", "content": "c3"}
    assert data.column_names == ["messages"]
    with pytest.raises(AlignError, match=rf"x.map: {__name__}:explode failed on row 1: KeyError"):
        load_dataset({"path": path, "map": f"{__name__}:explode"}, name="x")
    with pytest.raises(AlignError, match=rf"x.map: {__name__}:nothing must return the new row as a dict; on row 0"):
        load_dataset({"path": path, "map": f"{__name__}:nothing"}, name="x")
    with pytest.raises(AlignError, match=r"x.map: cannot import module 'no_such_module'"):
        load_dataset({"path": path, "map": "no_such_module:f"}, name="x")


def test_text_files_as_documents_paragraphs_and_lines(tmp_path):
    (tmp_path / "t.txt").write_text("one\ntwo\n\n\nthree\nfour\n\nfive\n")
    with gzip.open(tmp_path / "u.txt.gz", "wt") as f:
        f.write("six\nseven\n")
    t = str(tmp_path / "t.txt")
    assert load_dataset({"path": t}, name="t")["text"] == ["one\ntwo\n\n\nthree\nfour\n\nfive\n"]
    assert load_dataset({"path": [t, str(tmp_path / "u.txt.gz")]}, name="t")["text"][1] == "six\nseven\n"
    assert load_dataset({"path": t, "sample_by": "line"}, name="t")["text"] == ["one", "two", "three", "four", "five"]
    paragraphs = load_dataset({"path": t, "sample_by": "paragraph"}, name="t")["text"]
    assert [p.strip() for p in paragraphs] == ["one\ntwo", "three\nfour", "five"]
    assert load_dataset({"path": t, "sample_by": "line", "split": "train[:40%]"}, name="t")["text"] == ["one", "two"]
    with pytest.raises(AlignError, match=r"datasets.novel: could not read .*t.txt as text.* one document by default.*sample_by"):
        load_dataset({"path": t, "split": "train[:50%]"}, name="datasets.novel")


def test_stage_output(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "preferences" / "dataset"))
    assert len(load_dataset({"stage_dir": str(tmp_path / "preferences")}, name="prefs")) == 3
    with pytest.raises(AlignError, match=r"stages.dpo.dataset: stage 'sft' has not produced a dataset"):
        load_dataset({"stage_dir": str(tmp_path / "sft")}, name="stages.dpo.dataset")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}) \
        .save_to_disk(str(tmp_path / "split" / "dataset"))
    assert len(load_dataset({"stage_dir": str(tmp_path / "split"), "split": "test"}, name="s")) == 1
    with pytest.raises(AlignError, match=r"s: stage 'split' wrote splits \['train', 'test'\], not 'dev'"):
        load_dataset({"stage_dir": str(tmp_path / "split"), "split": "dev"}, name="s")


def test_builtin_datasets():
    pytest.importorskip("align.data.builtin")
    data = load_dataset({"builtin": "reviews", "split": "sft", "size": 5, "seed": 1}, name="datasets.chat")
    assert len(data) == 5 and validate_dataset(data, name="chat") == "conversational"
    with pytest.raises(AlignError, match=r"datasets.chat: builtin dataset 'nope'"):
        load_dataset({"builtin": "nope", "split": "sft"}, name="datasets.chat")


def test_hub_arguments_and_offline_error(monkeypatch):
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or datasets.Dataset.from_list(ROWS))
    load_dataset({"hub": "org/name", "config": "c", "split": "test", "revision": "v1", "limit": 2}, name="d")
    assert calls == [(("org/name", "c"), {"split": "test", "revision": "v1"})]

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/name' on the Hub (OfflineModeIsEnabled)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AlignError, match=r"datasets.uf: could not load 'org/name' from the Hugging Face Hub: the hub "
                                         r"could not be reached.*OfflineModeIsEnabled.*path: instead"):
        load_dataset({"hub": "org/name", "split": "train"}, name="datasets.uf")


@pytest.mark.parametrize("spec, message", [
    ({"path": "missing.jsonl"}, r"datasets.d: file missing.jsonl does not exist \(relative paths are relative to"),
    ({"path": "nothing-*.jsonl"}, r"datasets.d: no file matches 'nothing-\*.jsonl'"),
    ({"path": "a.jsonl", "hub": "x"}, r"datasets.d: give exactly one of builtin, path, hub or stage_dir \(found path, hub\)"),
    ({"split": "train"}, r"datasets.d: give exactly one of .* \(found none\)"),
    ({"path": "a.jsonl", "limt": 3}, r"datasets.d.limt: unknown dataset key. Did you mean 'limit'\?"),
    ({"path": "a.jsonl", "renmae": {"a": "b"}}, r"datasets.d.renmae: .*Did you mean 'rename'\?"),
    ({"path": "a.jsonl", "revision": "main"}, r"datasets.d.revision: only applies to hub: datasets"),
    ({"path": "a.jsonl", "limit": "ten"}, r"datasets.d.limit: expected a whole number >= 0, got 'ten'"),
    ({"path": "a.jsonl", "rename": ["a"]}, r"datasets.d.rename: expected a mapping"),
    ({"path": "a.jsonl", "rename": {"question": "prompt"}}, r"datasets.d.rename: no column 'question'"),
    ({"path": "a.jsonl", "rename": {"prompt": "completion"}}, r"datasets.d.rename: cannot rename 'prompt' to 'completion'"),
    ({"path": "a.jsonl", "shuffle": "yes"}, r"datasets.d.shuffle: expected true or false"),
    ({"path": "a.txt", "sample_by": "sentence"}, r"datasets.d.sample_by: expected one of document, paragraph, line"),
    ({"path": "a.jsonl", "map": "upper"}, r"datasets.d.map: expected module:function"),
    ({"path": "a.jsonl", "split": "validation"}, r"datasets.d: could not read .*a.jsonl as json \(split 'validation'\)"),
    ({"path": "a.xml"}, r"datasets.d: cannot read a.xml: .xml is not supported"),
    ({"path": "bad.jsonl"}, r"datasets.d: could not read bad.jsonl as json .*JSON parse error"),
    ({"path": "a.jsonl", "convert": "alpaca"}, r"datasets.d.convert: unknown conversion 'alpaca'; available: hh-rlhf, ultrafeedback, sharegpt"),
    ({"path": ["a.jsonl", "a.txt"]}, r"datasets.d: the files mix formats \(json, text\)"),
    ({"path": ["a.jsonl", "b.jsonl"]}, r"datasets.d: could not read a.jsonl, b.jsonl as json .*CastError: Couldn't cast b: string"),
    ({"path": 3}, r"datasets.d.path: expected a file path or a list of them"),
    ("a.jsonl", r"datasets.d: expected a dataset spec mapping"),
])
def test_bad_specs(tmp_path, monkeypatch, spec, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p"}\n{"prompt": \n')
    write_jsonl(tmp_path / "b.jsonl", [{"b": "x"}])
    (tmp_path / "a.txt").write_text("text")
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(AlignError, match=message):
        load_dataset(spec, name="datasets.d")


def test_spec_keys_are_exported_for_the_recipe_validator():
    assert {"builtin", "path", "hub", "stage_dir", "split", "rename", "limit", "shuffle", "seed", "map",
            "convert", "sample_by", "size", "config", "revision", "on_invalid_rows", "chat_template_kwargs"} == DATASET_SPEC_KEYS


def test_fingerprint_follows_what_would_be_loaded(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", ROWS)
    before = fingerprint({"path": path})
    assert fingerprint({"path": path}) == before != fingerprint({"path": path, "limit": 1})
    write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    assert fingerprint({"path": path}) != before
    stage = tmp_path / "stage"
    stage.mkdir()
    empty = fingerprint({"stage_dir": str(stage)})
    (stage / ".align_complete.json").write_text('{"fingerprint": "1"}')
    assert fingerprint({"stage_dir": str(stage)}) not in (empty, fingerprint({"stage_dir": str(tmp_path / "other")}))
    assert fingerprint({"builtin": "reviews", "split": "sft"}) != fingerprint({"builtin": "reviews", "split": "prompts"})
    assert fingerprint({"hub": "a/b", "revision": "v1"}) != fingerprint({"hub": "a/b", "revision": "v2"})
    with pytest.raises(AlignError, match=r"datasets.x.path: expected a file path"):
        fingerprint({"path": None}, name="datasets.x")


def test_fingerprint_follows_the_map_function(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "mymap_for_fingerprint.py").write_text("def f(row):\n    return row\n")
    spec = {"path": write_jsonl(tmp_path / "a.jsonl", ROWS), "map": "mymap_for_fingerprint:f"}
    before = fingerprint(spec)
    (tmp_path / "mymap_for_fingerprint.py").write_text("def f(row):\n    return {'prompt': 'x'}\n")
    import sys
    sys.modules.pop("mymap_for_fingerprint", None)
    assert fingerprint(spec) != before


# ---------------------------------------------------------------- convert: hh-rlhf

def hh(*turns):
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def test_hh_rlhf_conversion_on_handmade_rows(tmp_path):
    rows = [
        # both replies start with the same words: the prompt must not swallow them
        {"chosen": hh("Tell me a joke", "I think a good joke is this one."), "rejected": hh("Tell me a joke", "I think not.")},
        # multi-turn
        {"chosen": hh("Hi there", "Hello!", "Tell me a joke", "Why did the chicken cross the road?"),
         "rejected": hh("Hi there", "Hello!", "Tell me a joke", "No.")},
        # the prompts differ: dropped
        {"chosen": hh("a", "x"), "rejected": hh("b", "y")},
    ]
    data = load_dataset({"path": write_jsonl(tmp_path / "hh.jsonl", rows), "convert": "hh-rlhf"}, name="hh")
    assert len(data) == 2 and validate_dataset(data, name="hh", expected="preference") == "preference"
    assert data[0] == {"prompt": [{"role": "user", "content": "Tell me a joke"}],
                       "chosen": [{"role": "assistant", "content": "I think a good joke is this one."}],
                       "rejected": [{"role": "assistant", "content": "I think not."}]}
    assert data[1]["prompt"] == [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
                                 {"role": "user", "content": "Tell me a joke"}]
    assert data[1]["chosen"] == [{"role": "assistant", "content": "Why did the chicken cross the road?"}]


def test_hh_rlhf_conversion_errors(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": hh("a", "x"), "rejected": hh("b", "y")}])
    with pytest.raises(AlignError, match=r"datasets.hh: convert: hh-rlhf could not parse any row"):
        load_dataset({"path": path, "convert": "hh-rlhf"}, name="datasets.hh")
    path = write_jsonl(tmp_path / "other.jsonl", ROWS)
    with pytest.raises(AlignError, match=r"datasets.hh: convert: hh-rlhf needs string columns chosen and rejected"):
        load_dataset({"path": path, "convert": "hh-rlhf"}, name="datasets.hh")


def test_hh_rlhf_conversion_on_the_real_file():
    path = SHARED_DATA / "hh-rlhf-harmless-test" / "test.jsonl.gz"
    if not path.exists():
        pytest.skip(f"{path} is not present")
    data = load_dataset({"path": str(path), "convert": "hh-rlhf"}, name="hh")
    assert 2290 <= len(data) <= 2312  # a handful of rows have an empty reply and are dropped
    assert validate_dataset(data, name="hh", expected="preference") == "preference"
    user = lambda text: {"role": "user", "content": text}  # noqa: E731
    assistant = lambda text: {"role": "assistant", "content": text}  # noqa: E731

    row = data[0]
    assert len(row["prompt"]) == 5 and row["prompt"][:3] == [
        user("what are some pranks with a pen i can do?"), assistant("Are you looking for practical joke ideas?"),
        user("yep")]
    assert row["prompt"][3]["content"].endswith("while they are masturbating you will find a new place to watch.")
    assert row["prompt"][4] == user("okay some of these do not have anything to do with pens")
    assert row["chosen"] == [assistant("No, sorry!  All of these involve a pen, the point is that you can get funny "
                                       "results by doing pranks with pens.")]
    assert row["rejected"][0]["content"].startswith("There are lots of funny things you can do with pens")

    row = data[7]
    assert [m["role"] for m in row["prompt"]] == ["user", "assistant", "user", "assistant", "user"]
    assert row["prompt"][-1] == user("loser")
    assert row["rejected"] == [assistant("I suppose.  But if I get really upset about this, I could use a malfunction. "
                                         "Do you know about malfunctions?")]

    row = data[74]  # the two replies share their first words: only the punctuation differs
    assert row["prompt"][-1] == user("Thanks for the help!")
    assert row["chosen"] == [assistant("You’re welcome.")] and row["rejected"] == [assistant("You’re welcome!")]
