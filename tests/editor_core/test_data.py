"""editor_core.data: each format on small handwritten files, errors that say where, helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from editor_core.data import (
    DataFormatError,
    load_counterfact,
    load_edits,
    load_jsonl,
    load_zsre_knowedit,
    load_zsre_mend,
    save_jsonl,
)
from editor_core.types import EditRequest, LocalityProbe

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

MEND = {
    "subject": "UniFirst", "src": "What is the product made by UniFirst?", "pred": "uniform",
    "rephrase": "What will be the product of UniFirst?", "alt": " unmanned aircraft",
    "answers": ["uniforms"], "loc": "nq question: who sang hey jude", "loc_ans": "The Beatles",
    "cond": "uniform >> unmanned aircraft || What is the product made by UniFirst?",
}
KNOWEDIT = {
    "subject": "Epaspidoceras", "target_new": "Noctuidae",
    "prompt": "Which family does Epaspidoceras belong to?", "ground_truth": ["Aspidoceratidae"],
    "rephrase_prompt": "What family are Epaspidoceras?", "cond": "x >> y || z",
    "locality": {"Relation_Specificity": [
        {"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]},
        {"prompt": "Epaspidoceras taxon rank", "ground_truth": [["genus", "Genus"]]},
    ]},
    "portability": {"Reasoning": [{"prompt": "Common name of that family?",
                                   "ground_truth": "Owlet moths"}]},
}
COUNTERFACT = {
    "case_id": 2, "prompt": "Toko Yasuda, the", "target_new": "piano", "subject": "Toko Yasuda",
    "ground_truth": "guitar", "rephrase_prompt": "Toko Yasuda is incredible at",
    "locality_prompt": "John Lennon performs on the", "locality_ground_truth": "guitar",
}


def write_json(tmp_path: Path, data: object, name: str = "data.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_lines(tmp_path: Path, lines: list[str], name: str = "edits.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_zsre_mend_maps_fields_and_strips_nq_prefix(tmp_path: Path) -> None:
    (req,) = load_zsre_mend(write_json(tmp_path, [MEND]))
    assert req == EditRequest(
        prompt="What is the product made by UniFirst?", target="unmanned aircraft",
        paraphrases=("What will be the product of UniFirst?",),
        locality=(LocalityProbe("who sang hey jude", "The Beatles"),),
        subject="UniFirst", ground_truth="uniforms")


def test_zsre_mend_ground_truth_falls_back_to_pred(tmp_path: Path) -> None:
    (req,) = load_zsre_mend(write_json(tmp_path, [{**MEND, "answers": []}]))
    assert req.ground_truth == "uniform"


def test_zsre_mend_blank_alt_is_an_error_unless_skipped(tmp_path: Path) -> None:
    path = write_json(tmp_path, [MEND, {**MEND, "alt": ""}])
    with pytest.raises(DataFormatError) as err:
        load_zsre_mend(path)
    assert (err.value.index, err.value.field) == (1, "alt")
    with pytest.warns(UserWarning, match=r"skipped 1 record.*\[1\]"):
        assert len(load_zsre_mend(path, skip_blank_targets=True)) == 1


def test_knowedit_locality_portability_and_alias_lists(tmp_path: Path) -> None:
    (req,) = load_zsre_knowedit(write_json(tmp_path, [KNOWEDIT]))
    assert (req.prompt, req.target, req.ground_truth) == (
        "Which family does Epaspidoceras belong to?", "Noctuidae", "Aspidoceratidae")
    assert req.paraphrases == ("What family are Epaspidoceras?",)
    assert req.locality == (LocalityProbe("The taxon rank of Epaspidoceras is", "genus"),
                            LocalityProbe("Epaspidoceras taxon rank", "genus"))
    assert req.meta["portability"] == {
        "Reasoning": [{"prompt": "Common name of that family?", "answer": "Owlet moths"}]}


def test_counterfact_maps_fields(tmp_path: Path) -> None:
    (req,) = load_counterfact(write_json(tmp_path, [COUNTERFACT]))
    assert req == EditRequest(
        prompt="Toko Yasuda, the", target="piano", paraphrases=("Toko Yasuda is incredible at",),
        locality=(LocalityProbe("John Lennon performs on the", "guitar"),),
        subject="Toko Yasuda", ground_truth="guitar")
    assert req.meta == {"case_id": 2, "paraphrase_dropped": False}


@pytest.mark.parametrize("rephrase", ["Toko Yasuda, the", "Toko Yasuda,"])
def test_counterfact_drops_paraphrase_equal_to_or_prefix_of_prompt(tmp_path: Path,
                                                                   rephrase: str) -> None:
    (req,) = load_counterfact(write_json(tmp_path, [{**COUNTERFACT, "rephrase_prompt": rephrase}]))
    assert req.paraphrases == ()
    assert req.meta == {"case_id": 2, "paraphrase_dropped": True}


def test_jsonl_loads_all_shapes_and_skips_blank_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path, [
        json.dumps({"prompt": "The capital of France is", "target": "Rome",
                    "paraphrases": ["France's capital is"],
                    "locality": ["The capital of Spain is", {"prompt": "2+2=", "answer": "4"},
                                 {"prompt": "Sky colour:"}],
                    "subject": "France", "ground_truth": "Paris"}),
        "",
        json.dumps({"prompt": "Water boils at", "target": "50 degrees"}),
    ])
    first, second = load_jsonl(path)
    assert first.locality == (LocalityProbe("The capital of Spain is"), LocalityProbe("2+2=", "4"),
                              LocalityProbe("Sky colour:"))
    assert (first.subject, first.ground_truth) == ("France", "Paris")
    assert first.paraphrases == ("France's capital is",)
    assert second == EditRequest("Water boils at", "50 degrees")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    requests = [
        EditRequest("The capital of France is", "Rome", ("France's capital is",),
                    (LocalityProbe("2+2=", "4"), LocalityProbe("Sky colour:")), "France", "Paris",
                    meta={"case_id": 7}),
        EditRequest("Water boils at", "50 degrees — ünïcode"),
    ]
    path = tmp_path / "out.jsonl"
    save_jsonl(requests, path)
    loaded = load_jsonl(path)
    assert loaded == requests
    assert [r.meta for r in loaded] == [{"case_id": 7}, {}]
    # Every loader's output can be saved and read back, CounterFact's meta included.
    cf = load_counterfact(write_json(tmp_path, [COUNTERFACT]))
    save_jsonl(cf, path)
    assert [(r, r.meta) for r in load_jsonl(path)] == [(r, r.meta) for r in cf]


@pytest.mark.parametrize("loader, record, index, field", [
    (load_counterfact, {k: v for k, v in COUNTERFACT.items() if k != "target_new"}, 1,
     "target_new"),
    (load_counterfact, {**COUNTERFACT, "prompt": 3}, 1, "prompt"),
    (load_zsre_mend, {**MEND, "alt": None}, 1, "alt"),
    (load_zsre_mend, {**MEND, "answers": "uniform"}, 1, "answers"),
    (load_zsre_knowedit, {**KNOWEDIT, "locality": {"Relation_Specificity": [{"prompt": "p"}]}},
     1, "locality.Relation_Specificity[0].ground_truth"),
    (load_zsre_knowedit, {**KNOWEDIT, "ground_truth": []}, 1, "ground_truth"),
    (load_counterfact, "not an object", 1, None),
])
def test_malformed_record_names_file_index_and_field(tmp_path, loader, record, index,
                                                     field) -> None:
    path = write_json(tmp_path, [COUNTERFACT if loader is load_counterfact else
                                 MEND if loader is load_zsre_mend else KNOWEDIT, record],
                      name="train.json")
    with pytest.raises(DataFormatError) as err:
        loader(path)
    assert (err.value.path, err.value.index, err.value.field) == (str(path), index, field)
    message = str(err.value)
    assert str(path) in message and f"record {index}" in message
    if field:
        assert f"field {field!r}" in message


def test_missing_field_message(tmp_path: Path) -> None:
    record = {k: v for k, v in MEND.items() if k != "alt"}
    path = write_json(tmp_path, [record], name="train.json")
    with pytest.raises(DataFormatError, match=r"train\.json: record 0: field 'alt': missing$"):
        load_zsre_mend(path)


@pytest.mark.parametrize("line, field", [
    ('{"prompt": "p", "target": "t", "paraphrases": "not a list"}', "paraphrases"),
    ('{"prompt": "p", "target": "t", "paraphrases": ["ok", 5]}', "paraphrases[1]"),
    ('{"prompt": "p", "target": "  "}', "target"),
    ('{"prompt": "p", "target": "t", "locality": [{"answer": "a"}]}', "locality[0].prompt"),
    ('{"prompt": "p", "target": "t", "locality": [3]}', "locality[0]"),
    ('{"prompt": "p", "target": "t", "meta": []}', "meta"),
    ('{"prompt": "p", "target": "t", "locality": {}}', "locality"),
    ('{"prompt": "p", "target": null}', "target"),
    ('{"prompt": "p", "target": "t"', None),  # bad JSON
])
def test_jsonl_errors_use_line_numbers(tmp_path: Path, line: str, field: str | None) -> None:
    path = write_lines(tmp_path, ['{"prompt": "p", "target": "t"}', "", line])
    with pytest.raises(DataFormatError) as err:
        load_jsonl(path)
    assert (err.value.path, err.value.index, err.value.field) == (str(path), 3, field)
    assert str(err.value).startswith(f"{path}: line 3: ")


@pytest.mark.parametrize("loader",
                         [load_zsre_mend, load_zsre_knowedit, load_counterfact, load_edits])
def test_top_level_not_a_list(tmp_path: Path, loader) -> None:
    path = write_json(tmp_path, {"records": [COUNTERFACT]})
    with pytest.raises(DataFormatError, match="expected a top-level JSON list, got dict") as err:
        loader(path)
    assert (err.value.index, err.value.field) == (None, None)


def test_nothing_half_loaded_even_when_only_the_last_record_is_bad(tmp_path: Path) -> None:
    path = write_json(tmp_path, [COUNTERFACT] * 5 + [{**COUNTERFACT, "subject": ""}])
    with pytest.raises(DataFormatError, match="record 5: field 'subject'"):
        load_counterfact(path)


def test_auto_detection(tmp_path: Path) -> None:
    cases = {"mend.json": [MEND], "knowedit.json": [KNOWEDIT], "cf.json": [COUNTERFACT],
             "own.json": [{"prompt": "p", "target": "t"}]}
    expected = {"mend.json": load_zsre_mend, "knowedit.json": load_zsre_knowedit,
                "cf.json": load_counterfact}
    for name, records in cases.items():
        path = write_json(tmp_path, records, name=name)
        got = load_edits(path)
        assert got == (expected[name](path) if name in expected else [EditRequest("p", "t")])
    jsonl = write_lines(tmp_path, [json.dumps({"prompt": "p", "target": "t"})])
    assert load_edits(jsonl) == load_edits(jsonl, "jsonl") == [EditRequest("p", "t")]
    assert load_edits(write_json(tmp_path, [], name="empty.json")) == []
    with pytest.raises(DataFormatError, match="cannot tell the format"):
        load_edits(write_json(tmp_path, [{"question": "q"}], name="odd.json"))


def test_explicit_and_unknown_formats(tmp_path: Path) -> None:
    path = write_json(tmp_path, [COUNTERFACT])
    assert load_edits(path, "counterfact") == load_counterfact(path)
    with pytest.raises(DataFormatError, match="field 'src': missing"):
        load_edits(path, "zsre")
    with pytest.raises(ValueError, match="auto, zsre, knowedit, counterfact, jsonl"):
        load_edits(path, "csv")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared benchmark data not present")
def test_real_benchmark_files() -> None:
    """Record counts from the data README, plus the quirks the loaders exist to handle."""
    train = load_counterfact(SHARED_DATA / "counterfact" / "train.json")
    val = load_counterfact(SHARED_DATA / "counterfact" / "val.json")
    assert (len(train), len(val)) == (10000, 1919)
    assert not {r.meta["case_id"] for r in train} & {r.meta["case_id"] for r in val}
    assert sum(r.meta["paraphrase_dropped"] for r in train) == 25
    assert sum(r.meta["paraphrase_dropped"] for r in val) == 5

    knowedit = load_zsre_knowedit(SHARED_DATA / "zsre" / "test_knowedit.json")
    assert len(knowedit) == 629 and all(len(r.locality) == 2 for r in knowedit)

    mend_path = SHARED_DATA / "zsre" / "train_mend.json"
    assert len(json.loads(mend_path.read_text(encoding="utf-8"))) == 1000
    # Two MEND records (534 and 723) have alt == "": strict loading refuses, opting in skips them.
    with pytest.raises(DataFormatError, match="record 534: field 'alt'"):
        load_zsre_mend(mend_path)
    with pytest.warns(UserWarning, match=r"\[534, 723\]"):
        mend = load_edits(mend_path, skip_blank_targets=True)
    assert len(mend) == 998
    assert not any(p.prompt.startswith("nq question:") for r in mend for p in r.locality)
