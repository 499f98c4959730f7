"""Packaging: the client and the CLI's client verbs install and run without torch (the service and
the library are the ``server`` extra), and ``python -m smedit`` is the ``smedit`` console script."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers", "tokenizers", "safetensors", "numpy", "fastapi", "uvicorn", "sqlalchemy",
         "alembic", "psycopg", "redis", "prometheus-client", "pydantic-settings"}
CLIENT_VERBS = ("edit", "bulk", "history", "revert", "restore", "generate", "probe")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)


def test_core_dependencies_are_the_client_only():
    project = _pyproject()["project"]
    core = {_name(r) for r in project["dependencies"]}
    assert not core & HEAVY, f"heavy packages in the core dependencies: {sorted(core & HEAVY)}"
    # what smedit.client, smedit.cli and smedit.commands.client_cmds import at module level
    assert {"httpx", "pydantic", "typer", "rich"} <= core


def test_server_extra_has_the_service_and_library():
    extras = _pyproject()["project"]["optional-dependencies"]
    server = [r.replace(" ", "") for r in extras["server"]]
    assert "torch==2.13.0" in server
    names = {_name(r) for r in server}
    for needed in ("torch", "transformers", "fastapi", "uvicorn", "sqlalchemy", "alembic", "redis", "psycopg",
                   "prometheus-client", "pydantic-settings", "safetensors", "tokenizers"):
        assert needed in names, needed
    assert {"test", "bench"} <= set(extras)


def test_packages_include_demo_world():
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pkg in ("editor_core*", "demo_world*", "app*", "smedit*", "migrations*"):
        assert pkg in include, pkg


def test_installers_use_the_server_extra():
    assert '".[server,test,bench]"' in (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert '".[server]"' in (ROOT / "Dockerfile").read_text()


# Runs in a fresh interpreter: refuses the server-side modules, then runs the CLI as
# ``python -m smedit`` does (runpy on the package's __main__) for each argv.
_BLOCKED_RUN = textwrap.dedent(r"""
    import contextlib, importlib.abc, io, json, runpy, sys, traceback

    BLOCKED = {"torch", "transformers", "fastapi", "sqlalchemy", "app", "editor_core", "demo_world",
               "uvicorn", "numpy"}
    requested = []

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                requested.append(name)
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Refuse())

    import smedit.client
    assert hasattr(smedit.client, "Client")

    results = []
    for argv in json.loads(sys.argv[1]):
        sys.argv = ["smedit", *argv]
        out, err = io.StringIO(), io.StringIO()
        code, exc = 0, None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_module("smedit", run_name="__main__", alter_sys=False)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException as e:
                code, exc = 1, f"{type(e).__module__}.{type(e).__name__}: {e}"
                err.write(traceback.format_exc())
        results.append({"argv": argv, "code": code, "exc": exc, "out": out.getvalue(), "err": err.getvalue()})
    print("RESULT " + json.dumps({"requested": requested, "results": results}))
""")


def _run_blocked(argvs: list[list[str]]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEDIT_")}
    env.update(COLUMNS="200", NO_COLOR="1", TERM="dumb")
    proc = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, json.dumps(argvs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT "):])


def test_cli_help_and_client_verbs_without_server_modules():
    help_argvs = [["--help"], *([verb, "--help"] for verb in CLIENT_VERBS),
                  *([cmd, "--help"] for cmd in ("serve", "worker", "cluster", "demo", "export", "train-editor", "tune",
                                                "eval", "bench"))]
    report = _run_blocked(help_argvs)
    assert report["requested"] == [], f"server-side modules imported: {report['requested']}"
    for r in report["results"]:
        assert r["code"] == 0 and r["exc"] is None, r
        assert "Usage:" in r["out"], r
    top = report["results"][0]["out"]
    for verb in (*CLIENT_VERBS, "serve", "worker"):
        assert verb in top


def test_client_verb_against_a_closed_port_fails_without_importing_torch():
    report = _run_blocked([["history", "--url", "http://127.0.0.1:9"]])
    assert report["requested"] == [], f"server-side modules imported: {report['requested']}"
    (r,) = report["results"]
    assert r["code"] != 0, r
    text = (r["exc"] or "") + r["err"] + r["out"]
    assert "ImportError" not in text and "ModuleNotFoundError" not in text, text
    # the connection failure itself is what is reported
    assert "ConnectError" in text or "onnection refused" in text or "error" in text.lower(), text


def test_python_dash_m_smedit_help():
    proc = subprocess.run([sys.executable, "-m", "smedit", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert proc.returncode == 0, proc.stderr
    assert "Usage: smedit" in proc.stdout
    for verb in CLIENT_VERBS:
        assert verb in proc.stdout
