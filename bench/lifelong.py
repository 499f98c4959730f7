"""Lifelong editing through the real service: the capacity curve.

    python -m bench.lifelong [--size small|tiny|wide] [--edits 200] [--burst 1] [--seeds 0 1 2]
        [--split dev|test] [--arms stacking corpus "corpus live=1"] [--checkpoints 25 50 ...]
        [--json FILE] [--quick]
    python -m bench.lifelong --merge RESULT.json RESULT.json ...

The embedded service (uvicorn in a thread, SQLite, in-process queue: the worker's own code path;
``--production``: a worker process on Redis + PostgreSQL and an API replica in this process) receives ``--edits`` demo-world edits, one POST per fact, ``--burst`` at a time (1: each waits
until the previous is applied). At each checkpoint (10, 25, 50, 100, 200, 500, 1000 live edits, as far
as ``--edits`` goes) the live weights are scored on **all** live edits (ES, GS anchor, GS unseen:
teacher-forced token accuracy, as the papers) and on locality probes of facts that no edit of the
run touches (LS other / LS same: share of answer tokens whose argmax is the **base** model's;
``spec_other`` / ``spec_same``: token accuracy of their TRUE answers, the papers' Specificity, next
to the base model's own, ``base_spec_*``).
Latency is submit -> applied per edit, p50/p99 over the edits since the previous checkpoint.

Arms are editors served by the same service, named by options:
``stacking`` (meta-trained with the demo spec's regulariser and shrinkage, seeded by the run's
seed, nothing protected: each edit solved without regard to the live ones, the reference);
``demo`` (the demo editor as built, whatever it protects); ``corpus`` (each module's key moment fitted on what the base model knows: the world's
pretraining facts, no retraining); ``live=μ`` (the solve also protects the live edits' keys with
weight μ); ``shrinkage=s`` (the key moment's identity share); untrained arms start from the
``stacking`` editor; ``trained`` meta-trains an editor with the arm's solve instead (``history=H`` simulated live edits per step,
``steps=N``, ``reg=C`` the L2 coefficient, ``l2=frobenius|key|locality`` the metric the L2 term measures the
shift in (default: the demo's), ``S=k`` edit steps (default 2), ``layers=K`` edits the MLP outputs of the last K layers (default:
the demo's); batch sizes 1/4/16). Options combine: ``"trained corpus live=1 history=64"``.

Splits: ``dev`` edits the demo editor's validation entities (never meta-trained on), ``test`` the
eval entities, ``train`` the editor's own training edits (many more of them: for latency and the
service's mechanics at 1,000 live edits, not for quality). Choose arms and their settings on dev; report test. The gate is off (the curve is
the editor's capacity; ``--gate`` turns the service's default gate on for every arm and counts
rejections). Service options of an arm: ``gate`` (the default gate: greedy ES/GS, canaries
against the base model, the side-effect budget, re-checks of live edits), ``budget=b`` and
``recheck=N`` (with the gate, its budget and re-check sample), ``consolidate=K`` (after every K
newly applied edits the service consolidates all live edits, ``POST /v1/versions/consolidate``;
each attempt's verdict and time in ``consolidations``); an arm with the gate counts its
rejections and 409 ``capacity`` refusals in ``statuses`` and reports ``drift`` (the share of
canaries changed against the base, as the gate measures it). Example: ``"demo gate budget=0.05"``.

Writes ``--json`` (default ``bench/results/lifelong_<size>_<split>.json``): ``rows``, one per
(arm, seed, checkpoint) with ``arm, seed, live_edits, es, gs_anchor, gs_unseen, ls_other, ls_same,
latency_p50_s, latency_p99_s``, and ``summary`` (mean/std over seeds), ``capacity`` (bench.capacity:
the most live edits held at the issue's bars, per edited parameter, input and known fact); plus
``..._curve.png``. Seeds run separately pool with ``--merge A.json B.json`` (those result files, not
the ``--json`` rows): ``lifelong_<size>_<split>_merged.json``, as if one run had had all the seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from bench.capacity import BARS, capacity, edited_size, known_facts
from bench.common import demo_world_model, print_table, resolve_size, results_dir, write_with_plots

CHECKPOINTS = (10, 25, 50, 100, 200, 500, 1000)
QUICK_CHECKPOINTS = (8, 16, 32)
METRICS = ["es", "gs_anchor", "gs_unseen", "ls_other", "ls_same", "spec_other", "spec_same"]
DEFAULT_ARMS = ["stacking", "corpus", "live=1", "corpus live=1"]


def parse_arm(name: str) -> dict:
    """``"trained corpus live=1 history=64"`` -> options; raises ValueError naming a bad token."""
    from editor_core.train_config import L2_METRICS

    opts: dict = {"name": name, "corpus": False, "live": 0.0, "trained": False, "history": 0,
                  "steps": None, "shrinkage": None, "reg": None, "S": 2, "layers": None, "demo": False,
                  "l2": None}
    opts.update({"gate": False, "budget": None, "recheck": None, "consolidate": None})  # the service's
    editor_tokens = []
    for token in name.split():
        key, _, value = token.partition("=")
        if token == "gate" or key in ("budget", "recheck"):
            opts["gate"] = True
        elif key != "consolidate":
            editor_tokens.append(token)
        try:
            if token in ("stacking", "gate"):
                continue
            elif key == "budget":
                opts["budget"] = float(value)
            elif key == "recheck":
                opts["recheck"] = int(value)
            elif key == "consolidate":
                opts["consolidate"] = int(value)
            elif token in ("corpus", "trained", "demo"):
                opts[token] = True
            elif key == "live":
                opts["live"] = float(value)
            elif key in ("history", "S", "layers"):
                opts[key] = int(value)
            elif key == "steps":
                opts["steps"] = int(value)
            elif key in ("shrinkage", "reg"):
                opts[key] = float(value)
            elif key == "l2" and value in L2_METRICS:
                opts["l2"] = value
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"arm {name!r}: unknown option {token!r} (stacking, demo, corpus, trained, live=, "
                             "history=, steps=, shrinkage=, reg=, S=, layers=, l2=frobenius|key|locality; gate, budget=, recheck=, consolidate=)") from None
    if (opts["reg"] is not None or opts["S"] != 2 or opts["history"] or opts["layers"] or opts["l2"]) \
            and not opts["trained"]:
        raise ValueError(f"arm {name!r}: reg=, S=, history=, layers= and l2= only apply to a trained arm")
    if opts["demo"] and editor_tokens != ["demo"]:
        raise ValueError(f"arm {name!r}: 'demo' (the demo editor as built) takes no editor options")
    return opts


def arm_editor(arm: dict, paths, model, tok, world, spec, seed: int, cache: Path, max_steps: int | None = None) -> Path:
    """An editor checkpoint for the arm, written once under ``cache`` (keyed by its settings).

    ``stacking`` is meta-trained with the demo spec's regulariser and shrinkage, nothing protected
    (the demo editor before protection existed), seeded by ``seed``; untrained arms start from it.
    """
    from demo_world.build import editor_requests, preservation_requests
    from editor_core.editor import SMEditor
    from editor_core.hypernet import TRAINING_VERSION

    if arm["demo"]:
        return paths.editor_dir
    steps = arm["steps"] or max_steps or spec.editor_steps
    ident = {k: v for k, v in arm.items() if k not in ("name", "steps", "gate", "budget", "recheck", "consolidate")}
    if ident["l2"] is None:  # arms named before l2= existed keep their cache keys
        del ident["l2"]
    ident["steps"] = steps
    ident.update(seed=seed, training=TRAINING_VERSION, demo=json.loads(paths.stamp_json.read_text()).get("key"),
                 reference=[spec.editor_reg, spec.editor_l2_metric, spec.editor_locality_weight,
                            spec.editor_key_shrinkage, spec.editor_steps])
    out = cache / hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:12]
    if (out / "editor.json").is_file():
        return out
    protects = arm["corpus"] or arm["live"] > 0 or arm["shrinkage"] is not None
    if arm["trained"] or not protects:
        from bench.quality import demo_modules
        from editor_core.train import TrainConfig, meta_train

        train, val = editor_requests(world, spec, seed)
        cfg = TrainConfig(
            n_steps=arm["S"], reg="l2", reg_coef=arm["reg"] or spec.editor_reg, l2_metric=arm["l2"] or spec.editor_l2_metric,
            locality_weight=spec.editor_locality_weight, seed=seed, modules=demo_modules(model, spec, arm["layers"]),
            max_steps=steps, val_every=max(1, steps // 4),
            key_shrinkage=arm["shrinkage"] or spec.editor_key_shrinkage,
            key_source="corpus" if arm["corpus"] else "edits", live_weight=arm["live"],
            live_history=arm["history"], batch_sizes=(1, 4, 16) if arm["history"] else None,
        )
        meta_train(model, tok, train, val, cfg, out, preserve=preservation_requests(world, seed))
        return out
    base = arm_editor(parse_arm("stacking"), paths, model, tok, world, spec, seed, cache, max_steps)
    editor = SMEditor.load(base, model, tok)
    if arm["shrinkage"] is not None:
        for moment in editor.key_moments:
            moment.shrinkage = arm["shrinkage"]
        editor.config.key_shrinkage = arm["shrinkage"]
    if arm["corpus"]:
        editor.fit_key_moments(preservation_requests(world, seed))
    editor.config = replace(editor.config, live_weight=arm["live"])
    editor.save(out, extra={"arm": arm["name"], "from": str(base)})
    return out


def modules_of(editor_dir: Path) -> list[str]:
    """The modules an editor checkpoint edits (its saved config)."""
    return list(json.loads((Path(editor_dir) / "editor.json").read_text())["config"]["modules"])


def edits_for(world, spec, split: str, seed: int, n: int):
    """``n`` edits of the split in a seeded order; ``dev`` = the editor's validation entities."""
    from demo_world.build import editor_requests

    if split == "dev":
        requests = editor_requests(world, spec, seed)[1]
    elif split == "train":  # the editor's own training edits: enough of them for latency at 1,000
        requests = editor_requests(world, spec, seed)[0]
        print("note: --split train edits the facts the editor was meta-trained on: a latency and "
              "capacity-mechanics run, its quality numbers are not a result")
    else:
        requests = world.edit_requests("eval", seed=seed)
    if n > len(requests):
        print(f"note: the {split} split has {len(requests)} edits; running {len(requests)} of the {n} asked for")
    return requests[:n]


def untouched_probes(requests):
    """Per request, its locality probes of facts no request of the run edits (with their groups)."""
    edited = {(r.meta["entity"], r.meta["relation"]) for r in requests}
    kept = []
    for r in requests:
        facts = list(zip(r.meta["locality_entities"], r.meta["locality_relations"]))
        groups = {i: "other" if i in r.meta["locality_other"] else "same" for i in range(len(r.locality))}
        kept.append([(p, groups[i]) for i, (p, f) in enumerate(zip(r.locality, facts)) if f not in edited])
    return kept


def score_live(runtime, requests, probes, refs) -> dict:
    """ES / GS on the live edits and LS on untouched facts, on the service's live weights."""
    from editor_core.scores import locality_scores, teacher_forced

    model, tok = runtime.model, runtime.tokenizer
    with runtime.lock:
        es = teacher_forced(model, tok, [r.prompt for r in requests], [r.target for r in requests])
        out = {"es": statistics.mean(s.token_acc for s in es)}
        for group in ("anchor", "unseen"):
            texts = [(t, r.target) for r in requests for t in r.meta.get(f"{group}_paraphrases", [])]
            if texts:
                tf = teacher_forced(model, tok, [t for t, _ in texts], [a for _, a in texts])
                out[f"gs_{group}"] = statistics.mean(s.token_acc for s in tf)
        flat = [(p, g) for ps in probes for p, g in ps]
        if flat:
            ls = locality_scores(model, tok, [p for p, _ in flat], refs)
            out.update(_by_group(ls, flat, "ls"))
            out.update(specificity(model, tok, flat))
    return out


def specificity(model, tok, flat) -> dict:
    """The papers' Specificity: token accuracy of the TRUE answer on untouched probes (LS above
    is "unchanged vs the base"; a fact the base got wrong counts against both the base and this)."""
    from editor_core.scores import teacher_forced

    known = [(p, g) for p, g in flat if p.answer]
    if not known:
        return {}
    tf = teacher_forced(model, tok, [p.prompt for p, _ in known], [p.answer for p, _ in known])
    return _by_group([s.token_acc for s in tf], known, "spec")


def _by_group(values, flat, prefix: str) -> dict:
    out = {}
    for group in ("other", "same"):
        picked = [v for v, (_, g) in zip(values, flat) if g == group]
        out[f"{prefix}_{group}"] = statistics.mean(picked) if picked else None
    return out


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def gate_settings(arm: dict) -> dict:
    """The arm's overrides of the service's gate settings (``budget=``, ``recheck=``)."""
    out: dict = {}
    if arm.get("budget") is not None:
        out["side_effect_budget"] = arm["budget"]
    if arm.get("recheck") is not None:
        out["gate_recheck_edits"] = arm["recheck"]
    return out


@contextmanager
def serving(paths, editor_dir: Path, gate: bool, production: bool, redis_url: str, pg_url: str,
            overrides: dict | None = None):
    """The service for one arm: embedded (one process, SQLite, in-process queue) or production
    (a worker process on Redis + PostgreSQL, and an API replica in this process that follows it:
    its weights are replayed from the database, and the edits are scored on them)."""
    from bench.serving import Server, settings_for

    overrides = overrides or {}
    with tempfile.TemporaryDirectory(prefix="smedit-lifelong-") as tmp:
        canaries = [line for line in paths.canary_file.read_text().split("\n") if line.strip()]
        settings = settings_for(paths, Path(tmp), canaries, gate)
        settings = settings.model_copy(update={"editor_dir": editor_dir, **overrides})
        if not production:
            server = Server(settings)
            try:
                yield server
            finally:
                server.stop()
            return
        from bench.service import drop_schema, make_schema
        from smedit.commands.cluster import LocalCluster

        schema = make_schema()
        database_url = f"{pg_url}?options=-csearch_path%3D{schema}"
        env = {"SMEDIT_MODEL_DIR": str(paths.model_dir), "SMEDIT_EDITOR_DIR": str(editor_dir), "SMEDIT_DEVICE": "cpu",
               "SMEDIT_ADMIN_KEY": settings.admin_key, "SMEDIT_GATE_ENABLED": str(gate).lower(),
               "SMEDIT_CANARY_PROMPTS": "|".join(settings.canary_prompts), "SMEDIT_LOG_LEVEL": "WARNING",
               "SMEDIT_REDIS_PREFIX": schema, "SMEDIT_DATA_DIR": str(Path(tmp) / "worker"),
               **{f"SMEDIT_{k.upper()}": str(v) for k, v in overrides.items()}}
        cluster = LocalCluster(database_url, redis_url, env=env, log_dir=Path(tmp) / "logs")
        try:
            cluster.start(api_replicas=0, workers=1, timeout=600)
            replica = settings.model_copy(update={"role": "api", "database_url": database_url, "redis_url": redis_url,
                                                  "redis_prefix": schema})
            server = Server(replica)
            try:
                yield server
            finally:
                server.stop()
        finally:
            cluster.stop()
            drop_schema(schema)


def run_arm(arm: dict, editor_dir: Path, paths, requests, checkpoints, burst: int, gate: bool, seed: int,
            production: bool = False, redis_url: str = "", pg_url: str = "") -> list[dict]:
    """Serve ``editor_dir``, submit ``requests`` ``burst`` at a time, score at each checkpoint."""
    from bench.serving import as_json, wait_terminal
    from editor_core.scores import locality_reference

    probes = untouched_probes(requests)
    rows: list[dict] = []
    gate = gate or arm.get("gate", False)
    with serving(paths, editor_dir, gate, production, redis_url, pg_url, gate_settings(arm)) as server:
        runtime = server.server.config.app.state.services.runtime
        with runtime.lock:
            refs = locality_reference(runtime.model, runtime.tokenizer, [p for ps in probes for p, _ in ps])
            base_spec = specificity(runtime.model, runtime.tokenizer, [x for ps in probes for x in ps])
        live: list = []
        latencies: list[float] = []
        statuses: dict[str, int] = {}
        consolidations: list[dict] = []
        since_consolidation = 0
        with server.client() as c:
            for start in range(0, len(requests), burst):
                group = requests[start : start + burst]
                t0 = time.perf_counter()
                ids = []
                for r in group:
                    resp = c.post("/v1/edits", json={"edits": [as_json(r)], "author": "bench.lifelong",
                                                     "reason": f"lifelong {arm['name']}"})
                    if resp.status_code == 409 and resp.json()["detail"].get("reason") == "capacity":
                        statuses["refused_capacity"] = statuses.get("refused_capacity", 0) + 1
                        ids.append(None)
                        continue
                    resp.raise_for_status()
                    ids.append(resp.json()["edit_ids"][0])
                for r, edit_id in zip(group, ids):
                    if edit_id is None:
                        continue
                    body = wait_terminal(c, edit_id)  # answers once this process serves the version
                    latencies.append(time.perf_counter() - t0)
                    statuses[body["status"]] = statuses.get(body["status"], 0) + 1
                    if body["status"] == "applied":
                        live.append(r)
                        since_consolidation += 1
                if arm.get("consolidate") and since_consolidation >= arm["consolidate"]:
                    consolidations.append(consolidate(c, len(live)))
                    since_consolidation = 0
                submitted = start + len(group)
                if any(submitted >= cp > start for cp in checkpoints) or submitted == len(requests):
                    t1 = time.perf_counter()
                    scores = score_live(runtime, live, probes, refs) if live else {}
                    rows.append({"arm": arm["name"], "seed": seed, "submitted": submitted, "live_edits": len(live),
                                 **{m: scores.get(m) for m in METRICS},
                                 "latency_p50_s": percentile(latencies, 0.5),
                                 "latency_p99_s": percentile(latencies, 0.99),
                                 "score_s": round(time.perf_counter() - t1, 2), "statuses": dict(statuses),
                                 "drift": (c.get("/readyz").json().get("side_effects") or {}).get("share"),
                                 "consolidations": list(consolidations),
                                 **{f"base_{k}": v for k, v in base_spec.items()},
                                 "mode": "production" if production else "embedded"})
                    print(json.dumps(rows[-1]), flush=True)
                    latencies = []
    return rows


def consolidate(c, live_edits: int) -> dict:
    """Ask the service to consolidate its live edits; wait for the verdict and time it."""
    t0 = time.perf_counter()
    r = c.post("/v1/versions/consolidate")
    if r.status_code != 202:
        return {"live_edits": live_edits, "status": f"refused {r.status_code}", "seconds": 0.0}
    job_id = r.json()["job_id"]
    while (job := c.get(f"/v1/jobs/{job_id}").json())["status"] in ("pending", "running"):
        time.sleep(0.05)
    return {"live_edits": live_edits, "status": job["status"], "error": job.get("error"),
            "seconds": round(time.perf_counter() - t0, 3)}


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["submitted"]), []).append(r)
    out = []
    for (arm, submitted), runs in groups.items():
        entry = {"arm": arm, "submitted": submitted, "n_seeds": len(runs),
                 "live_edits": statistics.mean(r["live_edits"] for r in runs), "mean": {}, "std": {}}
        for m in METRICS + ["latency_p50_s", "latency_p99_s"]:
            values = [r[m] for r in runs if r.get(m) is not None]
            entry["mean"][m] = statistics.mean(values) if values else None
            entry["std"][m] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def plot_lifelong(payload: dict, prefix: Path) -> list[Path]:
    from bench.plots import ES, GS, GS_UNSEEN, LS, LS_SAME, line_panels

    series: dict[str, list] = {}
    for e in payload["summary"]:
        series.setdefault(e["arm"], []).append((e["live_edits"], e["mean"]))
    return [line_panels(series, [ES, GS, GS_UNSEEN, LS, LS_SAME], "live edits",
                        f"lifelong editing, demo '{payload['size']}', {payload['split']} split",
                        prefix.with_name(f"{prefix.name}_curve.png"))]


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    from demo_world.build import DEMO_SIZES

    parser = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--size", default=None, choices=sorted(DEMO_SIZES), help="demo size (default: small; tiny with --quick)")
    parser.add_argument("--edits", type=int, default=200, help="edits submitted (the last checkpoint)")
    parser.add_argument("--burst", type=int, default=1, help="edits in flight at once (1: one at a time)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--split", choices=["dev", "test", "train"], default="test",
                        help="dev: choose settings; test: report; train: latency at many live edits only")
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, help="editor arms (see the module doc)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="meta-training steps of trained arms (default: the demo spec's editor_steps; steps= per arm)")
    parser.add_argument("--gate", action="store_true", help="keep the service's default quality gate on")
    parser.add_argument("--production", action="store_true",
                        help="a worker process on Redis + PostgreSQL, scored on a replica's replayed weights")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--json", type=Path, default=None, help="where to write the rows (default under bench/results)")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=None,
                        help=f"live-edit counts to score at (default {' '.join(map(str, CHECKPOINTS))}; --edits is always one)")
    parser.add_argument("--quick", action="store_true", help="tiny demo, 32 edits, checkpoints 8/16/32")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="pool earlier runs' result files (bench/results/lifelong_*.json, other seeds); runs nothing")
    args = parser.parse_args(argv)
    if args.merge:
        try:
            payload, rows = merge([json.loads(path.read_text()) for path in args.merge])
        except (OSError, ValueError, KeyError, IndexError) as exc:
            parser.error(f"--merge: {exc}")
        report(payload, rows, f"lifelong_{payload['size']}_{payload['split']}_merged")
        return
    if args.burst < 1 or args.edits < 1:
        parser.error("--edits and --burst must be >= 1")
    arms = []
    for name in args.arms:
        try:
            arms.append(parse_arm(name))
        except ValueError as exc:
            parser.error(str(exc))
    if args.quick:
        args.edits = min(args.edits, 32)
    resolve_size(args)
    if args.checkpoints and min(args.checkpoints) < 1:
        parser.error("--checkpoints must be >= 1")
    chosen = args.checkpoints or (QUICK_CHECKPOINTS if args.quick else CHECKPOINTS)
    checkpoints = sorted({c for c in chosen if c < args.edits}) + [args.edits]

    paths, model, tok, world = demo_world_model(args.data_dir, args.size, train_editor=True, comparison=False)
    spec = DEMO_SIZES[args.size]
    cache = results_dir() / "lifelong_editors" / args.size
    started = time.perf_counter()
    rows: list[dict] = []
    sizes: dict[str, dict] = {}  # per arm: what its editor may change
    for seed in args.seeds:
        requests = edits_for(world, spec, args.split, seed, args.edits)
        for arm in arms:
            editor_dir = arm_editor(arm, paths, model, tok, world, spec, seed, cache, args.max_steps)
            sizes[arm["name"]] = edited_size(model, modules_of(editor_dir))
            rows += run_arm(arm, editor_dir, paths, requests, checkpoints, args.burst, args.gate, seed,
                            args.production, args.redis_url, args.pg_url)
    payload = {"size": args.size, "split": args.split, "production": args.production, "seeds": args.seeds,
               "burst": args.burst, "gate": args.gate, "edits": args.edits, "checkpoints": checkpoints,
               "arms": [a["name"] for a in arms], "seconds": round(time.perf_counter() - started, 1),
               "sizes": sizes, "known_facts": known_facts(paths.stats()), "max_steps": args.max_steps,
               "demo": json.loads(paths.stamp_json.read_text()).get("key")}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))  # the rows alone: one per arm, seed, checkpoint
        print(f"wrote {args.json}")
    report(payload, rows, f"lifelong_{args.size}_{args.split}")


def report(payload: dict, rows: list[dict], name: str) -> dict:
    """Print the curve and the capacity at the bars; write the payload (rows, summary, capacity)."""
    summary = summarise(rows)
    print_table(f"lifelong editing, demo '{payload['size']}', {payload['split']} split, seeds {payload['seeds']}, "
                f"burst {payload['burst']}", ["arm", "live edits"] + METRICS + ["p50 s", "p99 s"],
                [[e["arm"], e["live_edits"]] + [e["mean"][m] if e["mean"][m] is not None else "-"
                                                 for m in METRICS + ["latency_p50_s", "latency_p99_s"]] for e in summary])
    held = capacity(summary, payload["sizes"], payload["known_facts"])
    print_table(f"capacity at the bars {BARS} (mean over seeds; held = last checkpoint meeting all, "
                "failed at = the next; missed before = earlier checkpoints below a bar)",
                ["arm", "held", "failed at", "missed before", "edited params", "edited inputs", "known facts",
                 "held / 1M params", "held / 1k inputs", "held / known facts"],
                [[c["arm"], c["held"], c["failed_at"] or "-", " ".join(map(str, c["missed_before"])) or "-",
                  c["edited_parameters"], c["edited_inputs"],
                  c["known_facts"], c["held_per_million_parameters"], c["held_per_thousand_inputs"],
                  c["held_share_of_known_facts"]] for c in held])
    payload = {**payload, "rows": rows, "summary": summary, "capacity": held}
    write_with_plots(name, payload, plot_lifelong)
    return payload


# what must agree for runs to pool; a file from before "max_steps" / "demo" were written is not
# checked on them (absent is unknown, not a conflict)
MERGE_KEYS = ("size", "split", "edits", "checkpoints", "burst", "gate", "production", "max_steps", "demo")
LATER_KEYS = ("max_steps", "demo")


def merge(payloads: list[dict]) -> tuple[dict, list[dict]]:
    """Runs of other seeds (separate processes) as one: the payload's settings and all rows;
    raises ValueError on runs that cannot pool (other settings, an arm's seed twice, other sizes)."""
    first = payloads[0]
    rows: list[dict] = []
    sizes: dict[str, dict] = {}
    seen: set[tuple] = set()
    for payload in payloads:
        if not isinstance(payload, dict) or "rows" not in payload:
            raise ValueError("not a bench.lifelong result file (the --json rows file cannot pool: "
                             "pass bench/results/lifelong_<size>_<split>.json)")
        for key in MERGE_KEYS:
            if key in LATER_KEYS and (key not in payload or key not in first):
                continue
            if payload.get(key) != first.get(key):
                raise ValueError(f"{key} differs ({first.get(key)!r} vs {payload.get(key)!r})")
        known = payload.get("known_facts") or payload["capacity"][0]["known_facts"]
        # result files from before "sizes" was written carry the same numbers in "capacity"
        arm_sizes = payload.get("sizes") or {c["arm"]: {k: c[k] for k in ("modules", "edited_parameters", "edited_inputs")}
                                             for c in payload["capacity"]}
        if known != (first.get("known_facts") or first["capacity"][0]["known_facts"]):
            raise ValueError("the runs' base models know other facts (another demo build)")
        for arm, size in arm_sizes.items():
            if sizes.setdefault(arm, size) != size:
                raise ValueError(f"arm {arm!r} edits other modules in two runs")
        runs = {(r["arm"], r["seed"]) for r in payload["rows"]}
        if runs & seen:
            raise ValueError(f"arm and seed in two runs: {sorted(runs & seen)}")
        seen |= runs
        rows += payload["rows"]
    seeds = sorted({r["seed"] for r in rows})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    return ({**{k: first.get(k) for k in MERGE_KEYS}, "seeds": seeds, "arms": arms, "sizes": sizes,
             "known_facts": known, "merged_from": len(payloads)}, rows)


if __name__ == "__main__":
    main()
