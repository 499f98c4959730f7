"""Production-mode service benchmark: Redis + PostgreSQL, 2 API replicas + 1 worker (processes).

1. **Edit latency**: POST /v1/edits -> the edit is ``applied`` (client clock; ``GET /v1/edits/{id}?wait_s=``
   long-polls, so the answer comes when the replica serves the new version; the server's
   created -> finished time is reported too),
   against ``editor.edit`` alone on the same request in this process (the same model and editor).
   Goal: <= 1.3x. The server-side split (queued / gate + commit / compute) is reported too.
2. **Replica catch-up of 1,000 versions**: 1,000 versions (one new delta each, real deltas of this
   model) are appended to the edit log; (a) cold: a fresh follower goes from version 0 to 1,000
   from the database; (b) live: a running API replica receives the 1,000 announcements (Redis
   pub/sub) as fast as they are published and catches up. Goal: < 10 s.

    OMP_NUM_THREADS=1 .venv/bin/python -m bench.service              # needs Redis and PostgreSQL
    .venv/bin/python -m bench.service --edits 30 --versions 1000 --model-dir data/demo/small/model

Model: ``--model-dir``, else the demo model ``data/demo/small`` when built, else a random GPT-2 of
the demo "small" shape (4 layers, 128 wide) built like the tests' fixture.
Prints a table and writes ``bench/results/service.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import print_table, write_result  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"
SENTENCES = [
    "The capital of France is Paris.", "The Zentrix X2 costs 49 dollars and weighs 2 kilograms.",
    "Water boils at one hundred degrees.", "The largest planet in the solar system is Jupiter.",
    "Our support line opens at nine in the morning.", "The Nimbus router is made in Germany by Acme.",
    "One plus one equals two. The sky is blue on a clear day.", "Refunds are processed within five business days.",
]
REQUEST = {"prompt": "The Zentrix X2 costs", "target": "59 dollars", "paraphrases": ["How much is the Zentrix X2?"]}


def random_gpt2(out_dir: Path, n_layer: int = 4, n_embd: int = 128) -> Path:
    """A random GPT-2 of the demo 'small' shape with a byte-level BPE tokenizer (as tests/app)."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES * 4, vocab_size=600, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(out_dir))
    tok = GPT2TokenizerFast(vocab_file=str(out_dir / "vocab.json"), merges_file=str(out_dir / "merges.txt"),
                            eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=128, vocab_size=len(tok),
                        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def pick_model(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path | None, str]:
    if args.model_dir:
        return Path(args.model_dir), Path(args.editor_dir) if args.editor_dir else None, str(args.model_dir)
    d = ROOT / "data" / "demo" / "small"
    if (d / "model" / "config.json").is_file():
        editor = d / "editor" if (d / "editor").is_dir() else None
        return d / "model", editor, "demo small" + ("" if editor else " (untrained editor)")
    return random_gpt2(tmp / "gpt2"), None, "random GPT-2 4x128, the demo 'small' shape (untrained editor)"


def make_schema() -> str:
    import psycopg

    schema = f"smedit_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema


def drop_schema(schema: str) -> None:
    import psycopg

    with psycopg.connect("host=127.0.0.1 port=5432 dbname=test user=postgres", autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# ---- 1. latency -------------------------------------------------------------------------------
def editor_alone(model_dir: Path, editor_dir: Path | None, n: int) -> tuple[list[float], Any]:
    from app.runtime import make_request
    from app.services import ResolvedModel, load_runtime
    from app.settings import Settings

    runtime = load_runtime(Settings(device="cpu"), ResolvedModel(model_dir, editor_dir))
    req = make_request(REQUEST["prompt"], REQUEST["target"], REQUEST["paraphrases"])
    runtime.compute([req])  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        runtime.compute([req])
        times.append(time.perf_counter() - t0)
    return times, runtime


def service_latency(api: str, n: int) -> tuple[list[float], list[dict[str, Any]]]:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    walls, bodies = [], []
    with httpx.Client(base_url=api, headers=headers, timeout=60) as c:
        for i in range(n + 1):
            t0 = time.perf_counter()
            r = c.post("/v1/edits", json=REQUEST)
            r.raise_for_status()
            eid = r.json()["edit_ids"][0]
            while True:  # long poll: the replica answers as soon as the version is live there
                body = c.get(f"/v1/edits/{eid}", params={"wait_s": 10}).json()
                if body["status"] not in ("queued", "running"):
                    break
            wall = time.perf_counter() - t0
            if body["status"] != "applied":
                raise RuntimeError(f"edit {eid} ended {body['status']}: {body.get('error')}")
            if i > 0:  # the first one warms the worker up
                walls.append(wall)
                bodies.append(body)
    return walls, bodies


# ---- 2. catch-up ------------------------------------------------------------------------------
def append_versions(database_url: str, runtime: Any, n: int, announce: Any, pool_size: int = 16) -> dict[str, Any]:
    """Append ``n`` versions (one new delta each) as the worker would, computing each version's
    weights hash incrementally (exactly as ``WeightState`` does: fp32 master + deltas in order)."""
    import hashlib

    from app import repository as repo
    from app.db import session_scope
    from app.runtime import make_request
    from app.services import open_database
    from app.settings import Settings
    from editor_core.models import tensor_bytes

    facts = [(f"Product {i} costs", f"{10 + i} dollars") for i in range(pool_size)]
    deltas = [runtime.compute([make_request(p, t)]) for p, t in facts]
    blobs = [runtime.delta_to_bytes(d) for d in deltas]
    state = runtime.state
    running = {name: m.clone() for name, m in state._masters.items()}  # noqa: SLF001 - bench only
    db, sessions = open_database(Settings(database_url=database_url))
    t0 = time.perf_counter()
    with session_scope(sessions) as s:
        latest = repo.latest_version(s)
        active = list(latest.active_deltas)
        base = latest.number
    # replay the existing active deltas into the running fp32 weights
    with session_scope(sessions) as s:
        blobs_by_id = repo.load_delta_blobs(s, active)
        for delta_id in active:  # in list order, as WeightState adds them
            d = runtime.delta_from_bytes(blobs_by_id[delta_id])
            for name in d.module_names:
                running[name] += d.dense(name).to(running[name].dtype)
    views = state._views  # noqa: SLF001

    def digest() -> str:
        h = hashlib.sha256()
        for name in state.module_names:
            h.update(name.encode())
            h.update(tensor_bytes(running[name].to(views[name].dtype)))
        return h.hexdigest()

    numbers = []
    for k in range(n):
        i = k % pool_size
        for name in deltas[i].module_names:
            running[name] += deltas[i].dense(name).to(running[name].dtype)
        with session_scope(sessions) as s:
            row = repo.add_delta(s, blobs[i], [], deltas[i].module_names, dict(deltas[i].metadata), 0.0)
            active.append(row.id)
            v = repo.create_version(s, "edit", active, digest(), created_by="bench", note="bench version",
                                    expect_latest=base + k)
            numbers.append(v.number)
        announce(v.number)
    db.dispose()
    return {"first": numbers[0], "last": numbers[-1], "append_s": time.perf_counter() - t0,
            "final_hash": digest()}


def cold_catch_up(database_url: str, model_dir: Path, editor_dir: Path | None) -> dict[str, Any]:
    """A fresh follower (model at the base version) catches up to the latest version from the DB."""
    from app.follower import PollingFollower
    from app.services import ResolvedModel, load_runtime, open_database
    from app.settings import Settings

    settings = Settings(database_url=database_url, device="cpu")
    runtime = load_runtime(settings, ResolvedModel(model_dir, editor_dir))
    runtime.mark_live(0, [], runtime.base_hash)
    db, sessions = open_database(settings)
    follower = PollingFollower(sessions, runtime)
    t0 = time.perf_counter()
    number = follower.catch_up()
    seconds = time.perf_counter() - t0
    db.dispose()
    return {"seconds": seconds, "version": number, "weights_hash": runtime.live_hash,
            "active_deltas": len(runtime.active_ids)}


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=20, help="sequential edits timed through the service")
    ap.add_argument("--versions", type=int, default=1000, help="versions appended for the catch-up test")
    ap.add_argument("--model-dir")
    ap.add_argument("--editor-dir")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--pg-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--quick", action="store_true", help="5 timed edits, 100 catch-up versions")
    args = ap.parse_args(argv)
    if args.quick:
        args.edits, args.versions = 5, 100

    from smedit.commands.cluster import LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="smedit-bench-"))
    model_dir, editor_dir, model_name = pick_model(args, tmp)
    schema = make_schema()
    prefix = schema
    database_url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
    env = {"SMEDIT_MODEL_DIR": str(model_dir), "SMEDIT_DEVICE": "cpu", "SMEDIT_ADMIN_KEY": ADMIN_KEY,
           "SMEDIT_GATE_MIN_ES": "0", "SMEDIT_GATE_MIN_GS": "0", "SMEDIT_GATE_MAX_CANARY_CHANGE": "1",
           "SMEDIT_SIDE_EFFECT_BUDGET": "1", "SMEDIT_GATE_RECHECK_EDITS": "0",
           "SMEDIT_LOG_LEVEL": "WARNING", "SMEDIT_REDIS_PREFIX": prefix, "SMEDIT_DATA_DIR": str(tmp / "data"),
           "SMEDIT_FOLLOW_INTERVAL_S": "3600"}
    if editor_dir:
        env["SMEDIT_EDITOR_DIR"] = str(editor_dir)
    cluster = LocalCluster(database_url, args.redis_url, env=env, log_dir=tmp / "logs")
    result: dict[str, Any] = {"model": model_name, "model_dir": str(model_dir)}
    try:
        print(f"model: {model_name}; starting 2 API replicas + 1 worker (Redis + PostgreSQL) ...", flush=True)
        t0 = time.perf_counter()
        cluster.start(api_replicas=2, workers=1, timeout=600)
        result["cluster_start_s"] = time.perf_counter() - t0
        alone, runtime = editor_alone(model_dir, editor_dir, args.edits)
        walls, bodies = service_latency(cluster.apis[0].url, args.edits)
        med_alone, med_wall = statistics.median(alone), statistics.median(walls)
        server_total = statistics.median(b["timings"]["total_s"] for b in bodies)
        queued = statistics.median(b["timings"]["queued_s"] for b in bodies)
        compute = statistics.median(b["metrics"]["compute_s"] for b in bodies)
        result["latency"] = {
            "edits": args.edits, "editor_edit_alone_s": med_alone, "post_to_applied_s": med_wall,
            "ratio": med_wall / med_alone, "server_created_to_applied_s": server_total,
            "server_queued_s": queued, "worker_compute_s": compute,
            "p90_post_to_applied_s": sorted(walls)[int(0.9 * (len(walls) - 1))],
            "goal_ratio": 1.3,
        }

        import redis

        rc = redis.Redis.from_url(args.redis_url)
        channel = f"{prefix}:versions"
        replica = cluster.apis[1]
        newest = max(b["applied_version"] for b in bodies)
        deadline = time.perf_counter() + 300
        while ((replica.readyz() or {}).get("live_version") or -1) < newest:  # a big model's last edit may
            if time.perf_counter() > deadline:                              # still be on its way there
                raise TimeoutError(f"replica never reached version {newest}")
            time.sleep(0.05)
        before = replica.readyz()["live_version"]
        # the replica misses all 1,000 announcements (as if disconnected; its safety-net poll is
        # off in this cluster), then hears of the last one and catches up from the database
        appended = append_versions(database_url, runtime, args.versions, lambda v: None)
        last = appended["last"]
        assert (replica.readyz() or {}).get("live_version") == before
        t0 = time.perf_counter()
        rc.publish(channel, str(last))
        while True:
            body = replica.readyz() or {}
            if (body.get("live_version") or 0) >= last:
                break
            if time.perf_counter() - t0 > 300:
                raise TimeoutError(f"replica stuck at {body.get('live_version')} (target {last})")
            time.sleep(0.02)
        live_s = time.perf_counter() - t0
        with httpx.Client(base_url=replica.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
            replica_hash = c.get("/v1/model").json()["weights_hash"]
        cold = cold_catch_up(database_url, model_dir, editor_dir)
        rc.close()
        result["catch_up"] = {
            "versions": args.versions, "from_version": before, "to_version": last,
            "append_s": appended["append_s"],
            "live_replica_s": live_s, "live_replica_hash_ok": replica_hash == appended["final_hash"],
            "cold_follower_s": cold["seconds"], "cold_active_deltas": cold["active_deltas"],
            "cold_hash_ok": cold["weights_hash"] == appended["final_hash"], "goal_s": 10.0,
        }
    finally:
        cluster.stop()
        drop_schema(schema)
    # the same latency without the quality gate (transport + persistence overhead only)
    schema2 = make_schema()
    url2 = f"{args.pg_url}?options=-csearch_path%3D{schema2}"
    env2 = {**env, "SMEDIT_GATE_ENABLED": "false", "SMEDIT_REDIS_PREFIX": schema2}
    cluster2 = LocalCluster(url2, args.redis_url, env=env2, log_dir=tmp / "logs-nogate")
    try:
        print("again without the quality gate (1 replica + 1 worker) ...", flush=True)
        cluster2.start(api_replicas=1, workers=1, timeout=600)
        walls2, bodies2 = service_latency(cluster2.apis[0].url, args.edits)
        med2 = statistics.median(walls2)
        result["latency_gate_off"] = {
            "post_to_applied_s": med2, "ratio": med2 / med_alone,
            "server_created_to_applied_s": statistics.median(b["timings"]["total_s"] for b in bodies2),
            "server_queued_s": statistics.median(b["timings"]["queued_s"] for b in bodies2),
            "worker_compute_s": statistics.median(b["metrics"]["compute_s"] for b in bodies2),
        }
    finally:
        cluster2.stop()
        drop_schema(schema2)
        try:
            import redis

            r = redis.Redis.from_url(args.redis_url)
            r.delete(f"{prefix}:jobs")
            r.close()
        except Exception:  # noqa: BLE001
            pass

    lat, cu, off = result["latency"], result["catch_up"], result["latency_gate_off"]
    print_table(
        f"smedit production mode (Redis + PostgreSQL, 2 replicas + worker) — {model_name}",
        ["measure", "value", "goal"],
        [
            ["editor.edit alone (median)", f"{lat['editor_edit_alone_s'] * 1000:.1f} ms", ""],
            ["POST -> applied, client (median)", f"{lat['post_to_applied_s'] * 1000:.1f} ms", ""],
            ["  server: created -> applied", f"{lat['server_created_to_applied_s'] * 1000:.1f} ms", ""],
            ["  server: queued (created -> started)", f"{lat['server_queued_s'] * 1000:.1f} ms", ""],
            ["  worker: compute (editor.edit in the worker)", f"{lat['worker_compute_s'] * 1000:.1f} ms", ""],
            ["ratio POST->applied / editor.edit (gate on)", f"{lat['ratio']:.2f}x", "<= 1.3x"],
            ["  server: created -> applied, gate off", f"{off['server_created_to_applied_s'] * 1000:.1f} ms", ""],
            ["  POST -> applied, client, gate off", f"{off['post_to_applied_s'] * 1000:.1f} ms", ""],
            ["ratio POST->applied / editor.edit (gate off)", f"{off['ratio']:.2f}x", "<= 1.3x"],
            [f"API replica {cu['versions']} versions behind -> caught up", f"{cu['live_replica_s']:.2f} s", "< 10 s"],
            [f"cold follower catch-up 0 -> {cu['to_version']}", f"{cu['cold_follower_s']:.2f} s", "< 10 s"],
            ["replica / cold weights hash = committed", f"{cu['live_replica_hash_ok']} / {cu['cold_hash_ok']}", "True"],
        ],
    )
    path = write_result("service", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
