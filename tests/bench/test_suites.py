"""The sequential, low-data and real-data suites end to end on a tiny generated world (seconds).

``main()`` runs as on the command line; only the demo build is replaced by the tiny fixture (an
untrained model: the numbers mean nothing, the plumbing and the JSON are what is checked).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

METRICS = {"es", "gs", "ls", "es_first", "gs_anchor", "ls_other", "ls_same"}


@pytest.fixture
def fake_demo(tiny_setup, monkeypatch, tmp_path):
    model, tok, world = tiny_setup

    def demo_world_model(data_dir, size, seed=0, train_editor=False):
        return SimpleNamespace(root=tmp_path / "demo"), model, tok, world

    import bench.lowdata
    import bench.quality
    import bench.sequential

    monkeypatch.setattr(bench.quality, "demo_world_model", demo_world_model)
    monkeypatch.setattr(bench.sequential, "demo_world_model", demo_world_model)
    monkeypatch.setattr(bench.lowdata, "demo_world_model", demo_world_model)
    return tiny_setup


def _load(path):
    assert path.is_file(), path
    return json.loads(path.read_text())


def test_sequential_suite_writes_json_and_plot(fake_demo, results):
    from bench.sequential import main

    main(["--size", "tiny", "--settings", "1x2", "3x2", "--max-steps", "2", "--no-generation",
          "--methods", "no-edit", "SMEdit S=2 L2"])
    data = _load(results / "sequential_tiny.json")
    assert {"environment", "size", "seeds", "settings", "results", "seconds"} <= set(data)
    assert data["settings"] == ["1x2", "3x2"]
    got = {(r["method"], r["T"], r["n"], r["edits"]) for r in data["results"]}
    assert got == {("no-edit", 1, 2, 2), ("no-edit", 3, 2, 6), ("SMEdit S=2 L2", 1, 2, 2), ("SMEdit S=2 L2", 3, 2, 6)}
    for r in data["results"]:
        assert METRICS <= set(r["mean"]) and r["mean"]["es"] is not None
    no_edit = [r for r in data["results"] if r["method"] == "no-edit"]
    assert all(r["mean"]["ls"] == 1.0 for r in no_edit)  # nothing applied: locality untouched
    assert (results / "sequential_tiny_curve.png").stat().st_size > 0


def test_sequential_edits_accumulate_without_revert(tiny_setup):
    """T batches are applied one after another: each edit sees the previous ones; all undone at the end."""
    import torch

    from editor_core.arch import default_modules, get_module
    from editor_core.baselines import FTLConfig, FTLEditor
    from editor_core.evaluate import evaluate_editing

    model, tok, world = tiny_setup
    weight = get_module(model, default_modules(model)[0]).weight
    original = weight.detach().clone()
    ftl = FTLEditor(model, tok, FTLConfig(steps=3, lr=0.05, norm_bound=0.05))
    seen: list[float] = []

    def edit(batch):
        seen.append(float((weight - original).abs().sum()))  # how far the model is from the base now
        return ftl.edit(batch)

    requests = world.edit_requests("eval", seed=0)[:6]
    report = evaluate_editing(model, tok, edit, requests, batch_size=2, sequential=3, generation=False)
    assert len(seen) == 3 and seen[0] == 0.0 and seen[1] > 0.0 and seen[2] not in (0.0, seen[1])
    assert report["timing"]["sequential"] == 3 and report["summary"]["n_requests"] == 6
    assert torch.equal(weight, original)


def test_lowdata_suite_keys_and_cache_per_fraction(fake_demo, results):
    from bench.lowdata import main

    main(["--size", "tiny", "--fractions", "0.1", "1", "--max-steps", "2", "--no-generation", "--batch-size", "4",
          "--methods", "SMEdit S=1 L2", "MALMEN S=1 KL"])
    data = _load(results / "lowdata_tiny.json")
    assert {"environment", "fractions", "max_steps", "results", "n_eval"} <= set(data)
    rows = {(r["method"], r["fraction"]): r for r in data["results"]}
    assert set(rows) == {(m, f) for m in ("SMEdit S=1 L2", "MALMEN S=1 KL") for f in (0.1, 1.0)}
    small, full = rows[("SMEdit S=1 L2", 0.1)], rows[("SMEdit S=1 L2", 1.0)]
    assert small["n_train"] < full["n_train"] and small["train_batch"] == min(16, small["n_train"])
    for r in data["results"]:
        assert METRICS <= set(r["mean"])
    # one cached editor per (method, fraction): the fraction is part of the key
    assert len([p for p in (results / "editors" / "tiny").iterdir() if p.is_dir()]) == 4
    assert (results / "lowdata_tiny_curve.png").stat().st_size > 0


def test_lowdata_merge_pools_seeds_of_separate_runs_like_one_run(fake_demo, results, tmp_path, capsys):
    from bench.lowdata import main

    common = ["--size", "tiny", "--fractions", "0.5", "--max-steps", "2", "--no-generation", "--batch-size", "4",
              "--n-eval", "8", "--methods", "SMEdit S=1 L2"]
    main(common + ["--seeds", "0", "1"])
    both = _load(results / "lowdata_tiny.json")
    (tmp_path / "both.json").write_text(json.dumps(both))
    for seed in ("0", "1"):
        main(common + ["--seeds", seed])
        (tmp_path / f"seed{seed}.json").write_text((results / "lowdata_tiny.json").read_text())
    main(["--merge", str(tmp_path / "seed0.json"), str(tmp_path / "seed1.json")])
    merged = _load(results / "lowdata_tiny_merged.json")
    assert merged["seeds"] == [0, 1] and merged["merged_from"] == 2
    [one], [pooled] = both["results"], merged["results"]
    assert [r["seed"] for r in pooled["runs"]] == [0, 1]
    for key in ("mean", "std", "ci95"):  # the same statistics as the run that had both seeds
        assert pooled[key] == pytest.approx(one[key], nan_ok=True)
    seed1 = json.loads((tmp_path / "seed1.json").read_text())
    batch = json.loads(json.dumps(seed1))
    batch["results"][0]["batch"] += 1
    cases = [(both, "seed 0"), (seed1 | {"max_steps": 3}, "max_steps differs"),
             (seed1 | {"generation": True}, "generation differs"), (batch, "batch of"),
             (seed1["results"], "not a bench.lowdata result file")]
    for bad, reason in cases:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(SystemExit):
            main(["--merge", str(tmp_path / "seed0.json"), str(tmp_path / "bad.json")])
        assert reason in capsys.readouterr().err


def _counterfact_file(world, path):
    """A CounterFact (EasyEdit) file made of the world's facts: every record has all the fields."""
    records = []
    for i, r in enumerate(world.edit_requests("train", seed=0)[:40]):
        loc = r.locality[0]
        records.append({"case_id": i, "prompt": r.prompt, "target_new": r.target, "subject": r.subject,
                        "ground_truth": r.ground_truth, "rephrase_prompt": r.paraphrases[0],
                        "locality_prompt": loc.prompt, "locality_ground_truth": loc.answer})
    path.write_text(json.dumps(records))
    return path


def test_realdata_suite_builds_a_base_model_and_evaluates(tiny_setup, results, tmp_path):
    from bench.realdata import main

    data = _counterfact_file(tiny_setup[2], tmp_path / "cf.json")
    args = ["--data", str(data), "--lm", "tiny", "--n-records", "30", "--n-control", "5", "--max-steps", "2",
            "--n-eval", "6", "--batch-sizes", "3", "--no-generation", "--methods", "no-edit", "SMEdit S=2 L2"]
    main(args)
    out = _load(results / "realdata_cf30_tiny.json")
    assert {"base_model", "pretrain", "results", "n_records", "edit_modules"} <= set(out)
    assert {"prompt", "paraphrase", "neighbourhood", "control_prompt"} <= set(out["base_model"])
    assert out["base_model"]["n_control"] == 5
    assert {r["method"] for r in out["results"]} == {"no-edit", "SMEdit S=2 L2"}
    for r in out["results"]:
        assert {"es", "gs", "ls", "cf_efficacy"} <= set(r["mean"]) and r["batch"] == 3
    models = list((results / "realdata").glob("lm-tiny-*"))
    assert len(models) == 1 and (models[0] / "pretrain_stats.json").is_file()
    # cached: the same base model is reused, not a second one built; here 2 batches stay live at
    # once and the protected method is fitted on the base's own corpus and handed the live deltas
    protected = "SMEdit S=2 L2 +cov key_source=corpus live_weight=1"
    main(args + ["--sequential", "2", "--methods", "no-edit", protected])
    assert list((results / "realdata").glob("lm-tiny-*")) == models
    out = _load(results / "realdata_cf30_tiny.json")
    assert out["sequential"] == 2 and {r["method"] for r in out["results"]} == {"no-edit", protected}
    assert all(r["sequential"] == 2 for r in out["results"])
    editors = [json.loads(p.read_text())["config"] for p in (results / "editors" / "realdata").glob("*/editor.json")]
    assert any(c["key_source"] == "corpus" and c["live_weight"] == 1.0 for c in editors)
    # --preserve train: the preservation set leaves out the evaluated records' facts and neighbours
    assert out["preserve"] == "all"
    main(args + ["--sequential", "2", "--methods", protected, "--preserve", "train"])
    held_out = _load(results / "realdata_cf30_tiny_preservetrain.json")
    assert held_out["preserve"] == "train" and 0 < held_out["preserve_facts"] < out["preserve_facts"]
    assert len(list((results / "editors" / "realdata").glob("*/editor.json"))) == len(editors) + 1  # its own editor


def test_realdata_unseen_paraphrases_are_never_taught_and_their_ceiling_reported(tiny_setup, results, tmp_path, capsys):
    import random

    from bench.realdata import SPLIT_SEED, knowledge, main, true_fact_pairs
    from editor_core.data import load_edits
    from editor_core.models import load_model
    from editor_core.splits import split_by_subject

    data = _counterfact_file(tiny_setup[2], tmp_path / "cf.json")
    args = ["--data", str(data), "--lm", "tiny", "--n-records", "30", "--n-control", "5", "--max-steps", "2",
            "--n-eval", "2", "--batch-sizes", "2", "--no-generation", "--preserve", "train",
            "--methods", "no-edit", "SMEdit S=2 L2 +cov key_source=corpus"]
    main(args + ["--unseen-paraphrases", "--seeds", "0", "1"])
    out = _load(results / "realdata_cf30_tiny_unseen_preservetrain.json")
    assert out["paraphrases"] == "untaught"
    records = [r for r in load_edits(data, skip_blank_targets=True) if r.ground_truth][:30]
    _, dev, test = split_by_subject(records, [0.7, 0.1, 0.2], seed=SPLIT_SEED)
    untaught = {(p, r.ground_truth) for r in dev + test for p in r.paraphrases}
    corpus = set(true_fact_pairs(records, dev + test))
    assert untaught and not untaught & corpus and set(true_fact_pairs(records)) == corpus | untaught
    assert out["pretrain"]["n_texts"] == len(corpus)  # the base was trained on exactly that corpus
    # the ceiling, per seed: the base's own accuracy on the paraphrases of the records that seed evaluates
    [base_dir] = (results / "realdata").glob("lm-tiny-*")
    model, tok = load_model(base_dir)
    expected = []
    for seed in (0, 1):
        pool = list(test)
        random.Random(seed).shuffle(pool)
        expected.append(knowledge(model, tok, pool[:2], [])["paraphrase"])
    assert out["gs_ceiling"]["per_seed"] == pytest.approx(expected)
    assert out["gs_ceiling"]["mean"] == pytest.approx(sum(expected) / 2)
    assert not dev  # 30 records of a few subjects leave the dev part empty: said, before any base is built
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(args + ["--split", "dev", "--lm", "quick"])
    assert "dev part of 30 records is empty" in capsys.readouterr().err
    assert not list((results / "realdata").glob("lm-quick-*"))
    main(args)  # taught: another base model, on every paraphrase
    assert len(list((results / "realdata").glob("lm-tiny-*"))) == 2
    taught_run = _load(results / "realdata_cf30_tiny_preservetrain.json")
    assert taught_run["paraphrases"] == "taught"
    assert taught_run["pretrain"]["n_texts"] == len(true_fact_pairs(records)) > out["pretrain"]["n_texts"]


def test_realdata_unseen_paraphrases_refuse_a_given_model_dir(tmp_path, capsys):
    from bench.realdata import main

    with pytest.raises(SystemExit):
        main(["--model-dir", str(tmp_path), "--unseen-paraphrases"])
    assert "--unseen-paraphrases" in capsys.readouterr().err


def test_realdata_suite_edits_a_given_model_dir(tiny_setup, results, tmp_path):
    from bench.realdata import main

    model, tok, world = tiny_setup
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    data = _counterfact_file(world, tmp_path / "cf.json")
    main(["--data", str(data), "--model-dir", str(tmp_path / "lm"), "--n-records", "30", "--max-steps", "2",
          "--n-eval", "4", "--batch-sizes", "8", "--no-generation", "--methods", "no-edit"])
    out = _load(results / "realdata_lm.json")
    assert out["lm"] is None and out["pretrain"] is None
    assert out["results"][0]["batch"] == 8 and out["results"][0]["batch_effective"] == 4
    assert not (results / "realdata").exists()  # nothing was built


def test_realdata_low_data_trains_each_method_on_nested_shares_of_the_train_records(tiny_setup, results, tmp_path,
                                                                                     capsys):
    from bench.realdata import main

    model, tok, world = tiny_setup
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    data = _counterfact_file(world, tmp_path / "cf.json")
    main(["--data", str(data), "--model-dir", str(tmp_path / "lm"), "--n-records", "30", "--max-steps", "2",
          "--n-eval", "4", "--batch-sizes", "2", "--no-generation", "--fractions", "0.2", "1",
          "--methods", "no-edit", "SMEdit S=1 L2"])
    out = _load(results / "realdata_lm_lowdata.json")
    rows = {(r["method"], r["fraction"]): r for r in out["results"]}
    # no-edit trains nothing: once, at the full share; the meta-trained method at every share
    assert set(rows) == {("no-edit", 1.0), ("SMEdit S=1 L2", 0.2), ("SMEdit S=1 L2", 1.0)}
    small, full = rows[("SMEdit S=1 L2", 0.2)], rows[("SMEdit S=1 L2", 1.0)]
    assert 0 < small["n_train"] < full["n_train"] == out["split_sizes"]["train"]
    assert small["train_batch"] == min(16, small["n_train"])
    trained = [json.loads(p.read_text())["train_config"]
               for p in (results / "editors" / "realdata").glob("*/editor.json")]
    assert sorted(c["batch_size"] for c in trained) == sorted({small["train_batch"], full["train_batch"]})
    assert (results / "realdata_lm_lowdata_curve.png").stat().st_size > 0
    assert "train records" in capsys.readouterr().out
    # seeds run apart pool with bench.lowdata --merge, real-data columns kept
    # seeds run apart pool with bench.lowdata --merge, real-data columns kept; no-edit runs at 100 %
    # even when the shares asked for leave it out
    args = ["--data", str(data), "--model-dir", str(tmp_path / "lm"), "--n-records", "30", "--max-steps", "2",
            "--n-eval", "4", "--batch-sizes", "2", "--no-generation", "--fractions", "0.2", "0.5", "--methods",
            "no-edit", "SMEdit S=1 L2"]
    main(args + ["--seeds", "0", "--json", str(tmp_path / "s0.json")])
    main(args + ["--seeds", "1", "--json", str(tmp_path / "s1.json")])
    from bench.lowdata import main as lowdata_main

    lowdata_main(["--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json")])
    pooled = _load(results / "lowdata_lm_merged.json")
    assert pooled["seeds"] == [0, 1]
    assert {(r["method"], r["fraction"]) for r in pooled["results"]} == {
        ("no-edit", 1.0), ("SMEdit S=1 L2", 0.2), ("SMEdit S=1 L2", 0.5)}
    assert all(len(r["runs"]) == 2 and {"spec", "cf_efficacy"} <= set(r["mean"]) for r in pooled["results"])
    dev = json.loads((tmp_path / "s1.json").read_text()) | {"split": "dev"}
    (tmp_path / "dev.json").write_text(json.dumps(dev))
    with pytest.raises(SystemExit):  # another split does not pool
        lowdata_main(["--merge", str(tmp_path / "s0.json"), str(tmp_path / "dev.json")])
    assert "split differs" in capsys.readouterr().err
    for bad, says in ((["--fractions", "0", "1"], "--fractions"),
                      (["--fractions", "0.5", "--batch-sizes", "1", "2"], "one --batch-sizes")):
        with pytest.raises(SystemExit):
            main(["--data", str(data), "--model-dir", str(tmp_path / "lm")] + bad)
        assert says in capsys.readouterr().err


def test_realdata_suite_takes_zsre_mend_data(tiny_setup, results, tmp_path):
    from bench.realdata import main

    model, tok, world = tiny_setup
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    records = [{"subject": r.subject, "src": r.prompt, "alt": r.target, "answers": [r.ground_truth],
                "rephrase": r.paraphrases[0], "loc": f"nq question: {r.locality[0].prompt}",
                "loc_ans": r.locality[0].answer} for r in world.edit_requests("train", seed=0)[:20]]
    records.append({"src": "What is nothing?", "alt": "x", "answers": [], "rephrase": "Nothing is?"})
    (tmp_path / "zsre.json").write_text(json.dumps(records))
    main(["--data", str(tmp_path / "zsre.json"), "--model-dir", str(tmp_path / "lm"), "--n-records", "20",
          "--n-control", "0", "--max-steps", "1", "--n-eval", "4", "--batch-sizes", "4", "--no-generation",
          "--methods", "no-edit"])
    out = _load(results / "realdata_lm.json")
    assert out["dataset"].startswith("zsre ") and out["n_records"] == 20  # the record without an answer is left out
    assert out["results"][0]["mean"]["ls"] == 1.0  # no edit: the NQ-style neighbourhood answers stay
    assert out["base_model"]["n_records"] == 4


def test_realdata_suite_reports_knowedit_portability(tiny_setup, results, tmp_path):
    """KnowEdit records carry portability questions: a column overall and one per kind."""
    from bench.realdata import main

    model, tok, world = tiny_setup
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    records = []
    for r in world.edit_requests("train", seed=0)[:20]:
        loc = r.locality[0]
        records.append({"subject": r.subject, "prompt": r.prompt, "target_new": r.target, "ground_truth": [r.ground_truth],
                        "rephrase_prompt": r.paraphrases[0],
                        "locality": {"Relation_Specificity": [{"prompt": loc.prompt, "ground_truth": [loc.answer]}]},
                        "portability": {"Reasoning": [{"prompt": loc.prompt, "ground_truth": loc.answer}],
                                        "Subject_Aliasing": [{"prompt": r.prompt, "ground_truth": r.target}]}})
    (tmp_path / "knowedit.json").write_text(json.dumps(records))
    main(["--data", str(tmp_path / "knowedit.json"), "--model-dir", str(tmp_path / "lm"), "--n-records", "20",
          "--n-control", "0", "--max-steps", "1", "--n-eval", "4", "--batch-sizes", "4", "--no-generation",
          "--methods", "FT-L eps=0.1"])
    [row] = _load(results / "realdata_lm.json")["results"]
    mean = row["mean"]
    # here the aliasing question is the edit itself and the reasoning one the neighbour's true
    # answer (its Specificity); FT-L writes the edits, so ES is not the untrained model's ~0
    assert mean["es"] > 0.3
    assert mean["portability_subject_aliasing"] == pytest.approx(mean["es"])
    assert mean["portability_reasoning"] == pytest.approx(mean["spec"])
    assert mean["portability"] == pytest.approx((mean["es"] + mean["spec"]) / 2)


def test_realdata_suite_names_unreadable_data(tmp_path, capsys):
    from bench.realdata import main

    (tmp_path / "odd.json").write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path / "odd.json"), "--model-dir", str(tmp_path)])
    assert "cannot tell the format" in capsys.readouterr().err


def test_evaluate_clamps_a_batch_larger_than_the_requests(tiny_setup, capsys):
    from bench.quality import effective_batch
    from editor_core.baselines import NoEdit
    from editor_core.evaluate import evaluate_editing

    model, tok, world = tiny_setup
    requests = world.edit_requests("eval", seed=0)[:3]
    report = evaluate_editing(model, tok, NoEdit().edit, requests, batch_size=128, generation=False)
    assert report["timing"]["batch_size"] == 3 and report["timing"]["requested_batch_size"] == 128
    assert report["summary"]["n_requests"] == 3
    assert effective_batch(128, 3) == 3 and "clamped to n=3" in capsys.readouterr().out
    assert effective_batch(16, 64) == 16


def test_peak_memory_sees_an_allocation():
    import torch

    from bench.common import peak_memory_during

    def allocate():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB
        x += 1
        return float(x[0])

    value, added = peak_memory_during(allocate)
    assert value == 2.0
    assert added > 32 * 2**20


def test_a_method_name_can_carry_its_own_regulariser_coefficient(tiny_setup, tmp_path):
    from bench.quality import make_method

    model, tok, world = tiny_setup
    train = world.edit_requests("train", seed=0)[:8]
    common = dict(max_steps=1, seed=0, modules=None, cache=tmp_path, tag="t", progress=False, batch_size=4)
    make_method("SMEdit S=2 L2 reg=0.05", model, tok, train, train[:2], **common)
    make_method("SMEdit S=2 L2", model, tok, train, train[:2], **common)
    coefs = sorted(json.loads(p.read_text())["train_config"]["reg_coef"] for p in tmp_path.glob("*/editor.json"))
    assert coefs == [1e-3, 0.05]  # two editors, the default one and the named one
    with pytest.raises(ValueError, match="reg= wants a number"):
        make_method("SMEdit S=2 L2 reg=lots", model, tok, train, train[:2], **common)
    with pytest.raises(ValueError, match="unknown method"):
        make_method("SMEdit S=9 L2 reg=0.1", model, tok, train, train[:2], **common)
    # the untrained editor takes options too (e.g. the solve's key shrinkage), and trains nothing
    untrained = make_method("untrained S=2 key_shrinkage=0.5", model, tok, train, train[:2], **common).__self__
    assert untrained.config.key_shrinkage == 0.5
    assert {m.shrinkage for m in untrained.key_moments} == {0.5}
    assert len(list(tmp_path.glob("*/editor.json"))) == 2


def test_method_options_parse_into_train_config_fields():
    from bench.quality import split_options

    assert split_options("SMEdit S=2 L2 reg=5e-4 meta_lr=3e-3 max_steps=400 l2_metric=key") == (
        "SMEdit S=2 L2", {"reg_coef": 5e-4, "meta_lr": 3e-3, "max_steps": 400, "l2_metric": "key"})
    assert split_options("FT-L eps=0.03") == ("FT-L eps=0.03", {})  # eps is FT-L's own, not an option
    with pytest.raises(ValueError, match="max_steps= wants a number"):
        split_options("SMEdit S=2 L2 max_steps=1.5")


def test_quality_edit_layers_edits_those_layers_and_writes_its_own_file(fake_demo, results):
    from bench.quality import main
    from editor_core.arch import last_layer_modules

    model = fake_demo[0]
    args = ["--size", "tiny", "--seeds", "0", "--batch-sizes", "2", "--n-eval", "4", "--methods", "no-edit",
            "FT-L eps=0.1"]
    main(args + ["--edit-layers", "1"])
    main(args)
    one, default = _load(results / "quality_tiny_layers1.json"), _load(results / "quality_tiny.json")
    assert one["edit_modules"] == last_layer_modules(model, 1)
    assert default["edit_modules"] == last_layer_modules(model, 2)  # the tiny demo's own editors' layers
    assert {r["method"] for r in one["results"]} == {"no-edit", "FT-L eps=0.1"}


def test_serving_random_model_builds_a_loadable_model_and_editor(tiny_setup, results, tmp_path):
    from bench.serving import random_model
    from editor_core.editor import SMEditor
    from editor_core.models import load_model

    tok = tiny_setup[1]
    tok.save_pretrained(tmp_path / "tok")
    model_dir, editor_dir = random_model("1x32", tmp_path / "tok", progress=False)
    model, loaded_tok = load_model(model_dir, device="cpu")
    assert model.config.n_layer == 1 and model.config.n_embd == 32 and len(loaded_tok) == len(tok)
    editor = SMEditor.load(editor_dir, model, loaded_tok)
    assert editor.config.n_steps == 2
    assert random_model("1x32", tmp_path / "absent", progress=False) == (model_dir, editor_dir)  # cached
    with pytest.raises(SystemExit, match="LAYERSxWIDTH"):
        random_model("1by32", tmp_path / "tok")


@pytest.mark.parametrize("argv, message", [
    (["--model-dir", "m"], "--model-dir and --editor-dir go together"),
    (["--model-dir", "m", "--editor-dir", "e", "--random-model", "2x64"], "exclude each other"),
])
def test_serving_rejects_inconsistent_model_options(argv, message, capsys):
    from bench.serving import main

    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_realdata_leaves_facts_too_long_for_the_model_out_of_the_corpus():
    from bench.realdata import MAX_FACT_CHARS, true_fact_pairs
    from editor_core.types import EditRequest, LocalityProbe

    long_answer = "x" * MAX_FACT_CHARS
    records = [EditRequest("Q1?", "new", paraphrases=("Q1 again?",), ground_truth="a1",
                           locality=(LocalityProbe("NQ?", long_answer), LocalityProbe("Short?", "yes")))]
    pairs = true_fact_pairs(records)
    assert pairs == [("Q1?", "a1"), ("Q1 again?", "a1"), ("Short?", "yes")]
    assert true_fact_pairs(records, untaught_paraphrases=records) == [("Q1?", "a1"), ("Short?", "yes")]


@pytest.fixture
def lifelong_demo(tiny_setup, tmp_path, monkeypatch):
    """The tiny fixture saved as a demo (model, untrained editor, canaries) for bench.lifelong."""
    import bench.lifelong
    from editor_core.arch import last_layer_modules
    from editor_core.editor import EditorConfig, SMEditor

    model, tok, world = tiny_setup
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    SMEditor(model, tok, EditorConfig(n_steps=1, rank=4, modules=last_layer_modules(model, 1))).save(tmp_path / "editor")
    (tmp_path / "canaries.txt").write_text("\n".join(p.prompt for p in world.canary_prompts(4)))
    (tmp_path / "stamp.json").write_text("{}")
    paths = SimpleNamespace(root=tmp_path, model_dir=tmp_path / "model", editor_dir=tmp_path / "editor",
                            canary_file=tmp_path / "canaries.txt", stamp_json=tmp_path / "stamp.json",
                            stats=lambda: {"world": world.summary(), "knowledge": {"seen": 0.5}})
    monkeypatch.setattr(bench.lifelong, "demo_world_model", lambda *a, **k: (paths, model, tok, world))
    return bench.lifelong


def test_lifelong_suite_drives_the_service_and_scores_every_live_edit(lifelong_demo, tiny_setup, results, tmp_path):
    from bench.quality import demo_modules
    from demo_world.build import DEMO_SIZES
    from editor_core.arch import last_layer_modules

    model, _, world = tiny_setup

    out = tmp_path / "rows.json"
    lifelong_demo.main(["--size", "tiny", "--edits", "3", "--max-steps", "2", "--json", str(out),
                         "--arms", "demo", "stacking", "corpus live=1", "trained corpus live=1 history=4 l2=key",
                         "demo gate budget=0.5 recheck=4", "demo consolidate=2"])
    rows = _load(out)
    assert isinstance(rows, list)
    assert [r["arm"] for r in rows] == ["demo", "stacking", "corpus live=1", "trained corpus live=1 history=4 l2=key",
                                        "demo gate budget=0.5 recheck=4", "demo consolidate=2"]
    [attempt] = rows[-1]["consolidations"]  # after the 2nd applied edit (the 3rd makes it 1 since)
    assert attempt["live_edits"] == 2 and attempt["status"] == "done" and attempt["seconds"] > 0
    assert rows[0]["drift"] is None  # no gate: nothing measured against the base
    assert 0 <= rows[-2]["drift"] <= 0.5  # the gate's budget held
    assert set(rows[-2]["statuses"]) <= {"applied", "rejected", "refused_capacity"}
    for r in rows:
        assert {"arm", "live_edits", "es", "gs_anchor", "gs_unseen", "ls_other", "ls_same",
                "latency_p50_s", "latency_p99_s", "spec_other", "spec_same", "base_spec_other"} <= set(r)
        assert 0 <= r["base_spec_other"] <= 1
        assert r["live_edits"] == 0 or 0 <= r["spec_other"] <= 1
        assert sum(r["statuses"].values()) == 3 and r["live_edits"] == r["statuses"].get("applied", 0)
        assert "drift" in r
        assert r["latency_p50_s"] > 0
    assert (results / "lifelong_tiny_test_curve.png").stat().st_size > 0
    payload = json.loads((results / "lifelong_tiny_test.json").read_text())
    held = {c["arm"]: c for c in payload["capacity"]}
    assert set(held) == {r["arm"] for r in rows}
    [demo_module] = last_layer_modules(model, 1)  # what the fixture's demo editor edits
    assert held["demo"]["modules"] == 1
    assert held["demo"]["edited_parameters"] == model.get_submodule(demo_module).weight.numel()
    assert held["stacking"]["modules"] == len(demo_modules(model, DEMO_SIZES["tiny"], None)) > 1  # trained: the spec's
    for c in held.values():
        assert c["known_facts"] == world.summary()["facts"] * 0.5
        assert (c["failed_at"] is None) != (c["held"] == 0)  # one checkpoint: held there, or failed there
    editors = [json.loads(p.read_text()) for p in (results / "lifelong_editors" / "tiny").glob("*/editor.json")]
    assert len(editors) == 3  # stacking, and the two derived from it
    protected = [e["config"] for e in editors if e["config"]["key_source"] == "corpus"]
    assert len(protected) == 2 and all(c["live_weight"] == 1.0 for c in protected)
    trained = [e["train_config"] for e in editors if "train_config" in e]
    assert sorted(c["l2_metric"] for c in trained) == sorted(["key", DEMO_SIZES["tiny"].editor_l2_metric])  # l2= reached it
    with pytest.raises(SystemExit):
        lifelong_demo.main(["--arms", "corpus live=lots"])
    with pytest.raises(SystemExit):
        lifelong_demo.main(["--arms", "demo gate corpus"])  # the demo editor takes no editor options
    with pytest.raises(SystemExit):
        lifelong_demo.main(["--arms", "demo", "--checkpoints", "0"])


def test_lifelong_suite_in_production_mode_scores_a_replica_of_a_worker_process(lifelong_demo, results, tmp_path):
    """Redis + PostgreSQL: the worker is another process; the rows come from a replica's weights."""

    out = tmp_path / "rows.json"
    lifelong_demo.main(["--size", "tiny", "--edits", "3", "--production", "--json", str(out), "--arms", "demo",
                        "--checkpoints", "7", "2"])  # past --edits: dropped; --edits itself always scored
    first, row = _load(out)
    assert first["live_edits"] == 2 and first["statuses"] == {"applied": 2}
    assert row["mode"] == "production" and row["statuses"] == {"applied": 3} and row["live_edits"] == 3
    assert row["es"] is not None and row["ls_other"] is not None


def test_protected_methods_fit_the_preservation_set_and_are_handed_the_live_edits(tiny_setup, tmp_path):
    from bench.quality import make_method, wants_live
    from editor_core.evaluate import evaluate_editing
    from editor_core.types import EditRequest

    model, tok, world = tiny_setup
    train = world.edit_requests("train", seed=0)[:8]
    common = dict(max_steps=1, seed=0, modules=None, cache=tmp_path, tag="t", progress=False, batch_size=4)
    known = [EditRequest(prompt=p, target=a) for p, a in world.pretraining_pairs()[:24]]
    for name in ("untrained S=2 +cov key_source=corpus", "SMEdit S=2 L2 +cov key_source=corpus live_weight=1"):
        with pytest.raises(ValueError, match="key_source=corpus needs"):
            make_method(name, model, tok, train, train[:2], **common)
    plain = make_method("untrained S=2", model, tok, train, train[:2], **common)
    assert not wants_live(plain)
    for name in ("untrained S=2 +cov key_source=corpus live_weight=1", "SMEdit S=2 L2 +cov key_source=corpus live_weight=1 live_history=4"):
        edit_fn = make_method(name, model, tok, train, train[:2], preserve=known, **common)
        editor = edit_fn.__self__
        assert wants_live(edit_fn) and editor.config.key_source == "corpus"
        assert all(m.fitted == 1 for m in editor.key_moments)
        report = evaluate_editing(model, tok, edit_fn, train[:4], batch_size=1, sequential=4, generation=False, pass_live=True)
        assert report["summary"]["n_requests"] == 4


def test_gate_cost_times_the_gate_against_a_bare_forward_on_the_same_rows(lifelong_demo, results, monkeypatch):
    import bench.gate_cost

    monkeypatch.setattr(bench.gate_cost, "demo_world_model", lifelong_demo.demo_world_model)
    bench.gate_cost.main(["--size", "tiny", "--live", "3", "--canaries", "4", "--repeats", "3"])
    payload = json.loads((results / "gate_cost.json").read_text())
    now, before = payload["results"]["gate (live re-check)"], payload["results"]["gate before (16 canaries)"]
    assert now["live_rechecked"] == 3 and before["live_rechecked"] == 0
    assert now["rows"] > before["rows"] >= 1
    for r in (now, before):
        assert r["ratio"] > 0 and r["gate_s"][0] <= r["gate_s"][1] <= r["gate_s"][2]


def test_quality_dev_split_json_ceiling_specificity_and_ci(fake_demo, results, tmp_path):
    """--split dev evaluates the editors' validation entities (disjoint from test's), and the
    payload carries the split, the base model's ceiling, both locality readings and a 95 % CI."""
    from bench.quality import main
    from demo_world.build import DEMO_SIZES, editor_requests

    world = fake_demo[2]
    _, val = editor_requests(world, DEMO_SIZES["tiny"], 0)
    assert {r.meta["entity"] for r in val}.isdisjoint(world.splits["eval"])
    out = tmp_path / "q.json"
    main(["--size", "tiny", "--split", "dev", "--seeds", "0", "1", "--batch-sizes", "2", "--n-eval", "4",
          "--methods", "no-edit", "FT-L eps=0.1", "--json", str(out)])
    data = _load(out)
    assert data == _load(results / "quality_tiny_dev.json")
    assert data["split"] == "dev" and data["seeds"] == [0, 1]
    assert set(data["ceiling"]) >= {"gs_anchor_ceiling", "gs_unseen_ceiling"}
    assert all(0.0 <= v <= 1.0 for v in data["ceiling"].values())
    by_method = {r["method"]: r for r in data["results"]}
    none = by_method["no-edit"]
    assert none["mean"]["ls_other"] == 1.0  # nothing applied: every answer unchanged...
    assert 0.0 <= none["mean"]["spec_other"] <= 1.0  # ...but only the ones the base knew are right
    for r in data["results"]:
        assert {"spec_other", "spec_same"} <= set(r["mean"]) and set(r["ci95"]) == set(r["mean"])
        assert all(v is None or v >= 0 for v in r["ci95"].values())
    assert not (results / "quality_tiny.json").exists()  # the dev run never overwrites the test table
