"""Every shell command in README.md and docs/ is run as written, against a real server.

The ``bash`` blocks are split into commands (a command ends where its quotes balance and no ``\\``
or ``|`` continues it) and run in order, each in a bash that keeps what earlier ones exported,
waiting for the worker to go idle between them (as a person reads one answer before typing the
next command), with the documents' placeholders
bound to a live tiny-model server: ``http://127.0.0.1:8000`` / ``localhost:8000`` become its
address, ``smk_...`` its admin key, and ``SMEDIT_DATA_DIR`` its data directory. The server is seeded
with one version per edit, so the ids the docs use (edit 8, version 12, job 31) exist. A ``curl``
passes on an HTTP status below 400, a ``smedit`` command on exit code 0.

What cannot run here is listed in ``CANNOT_RUN`` with the reason; for those that are ``smedit``
commands, every option they name must still exist in the command's ``--help``. A command found in
no list and failing, or a listed command that no document has any more, fails the test.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app.conftest import ADMIN_KEY, RunningServer, wait_edit

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SMEDIT = str(Path(sys.executable).with_name("smedit"))
N_SEED = 32  # edits, one version each: the docs' example ids (up to job 31, version 14) exist

# Commands (by their start) that cannot run here, and why.
CANNOT_RUN = {
    "bash scripts/serve.sh": "starts the service until stopped; CI's clean-clone run and test_cli start it",
    "bash scripts/test.sh": "the test command itself",
    "docker compose": "no Docker engine here; tests/app/test_production_deploy.py checks the compose file",
    ".venv/bin/smedit cluster up": "starts a cluster until stopped; tests/app/test_production_cluster.py runs it",
    "smedit cluster up": "starts a cluster until stopped; tests/app/test_production_cluster.py runs it",
    ".venv/bin/smedit serve": "starts the service until stopped",
    "smedit serve": "starts the service until stopped",
    "SMEDIT_MODEL_DIR=/models/": "a model directory that does not exist here",
    ".venv/bin/python -m bench.": "a benchmark (minutes to hours); tests/bench runs each suite's --quick path",
    "export SMEDIT_ADMIN_KEY=": "production secrets for docker compose",
    "pg_dump": "a backup of a production database (needs $DATABASE_URL_LIBPQ)",
    "pg_restore": "a restore into a production database",
    "smedit export model --version 14 --out exports/v14-full --data-dir /srv/smedit": "paths of a production host",
    "SMEDIT_DATABASE_URL=postgresql+psycopg://smedit@db/": "a database host of a production network",
    "curl -s localhost:8000/readyz; curl -s localhost:8001/readyz": "two compose replicas",
    "smedit tune --model MODEL": "a search of tens of minutes on the reader's own model and data; "
                                 "tests/app/test_cli.py runs tune",
    "smedit train-editor --model MODEL": "meta-training on the reader's own model and data; test_cli.py runs it",
}
# Commands that run and must answer exactly this (the docs show them in a state a fresh server
# does not have), with why.
EXPECTED_ERRORS = {
    'smedit approve 9 --note "checked"': ("exit 1", "review mode: edit 9 is applied here, not held"),
    'smedit reject 10 --note "wrong source"': ("exit 1", "review mode: edit 10 is applied here, not held"),
}


@dataclass
class Command:
    doc: str
    text: str

    @property
    def key(self) -> str:
        """The command on one line, without its trailing comments."""
        return " ".join(" ".join(re.sub(r"\s+#\s.*$", "", line) for line in self.text.splitlines()).split())


def commands(path: Path) -> list[Command]:
    """The logical commands of a document's bash blocks (comments and blank lines dropped)."""
    out: list[Command] = []
    for block in re.findall(r"```(?:bash|sh|shell)\n(.*?)```", path.read_text(), re.S):
        pending = ""
        for line in block.splitlines():
            if not pending and (not line.strip() or line.lstrip().startswith("#")):
                continue
            pending = f"{pending}\n{line}" if pending else line
            stripped = pending.rstrip()
            if stripped.endswith(("\\", "|")):
                continue
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # an open quote: a multi-line JSON body goes on
                continue
            out.append(Command(path.name, pending.strip()))
            pending = ""
    return out


def reason_cannot_run(command: Command) -> str | None:
    for start, reason in CANNOT_RUN.items():
        if command.key.startswith(" ".join(start.split())):
            return reason
    if "jq " in command.text and shutil.which("jq") is None:
        return "jq is not installed here"
    return None


def _help_options(words: list[str]) -> tuple[list[str], str]:
    """The subcommand path of an ``smedit`` command line and its ``--help`` text."""
    path: list[str] = []
    for word in words[1:]:
        if word.startswith("-"):
            break
        trial = subprocess.run([SMEDIT, *path, word, "--help"], capture_output=True, text=True, timeout=60)
        if trial.returncode != 0:
            break
        path.append(word)
    shown = subprocess.run([SMEDIT, *path, "--help"], capture_output=True, text=True, timeout=60,
                           env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb"})
    return path, shown.stdout


def check_options_exist(command: Command) -> None:
    """A command that cannot run still names only options its smedit command has."""
    for part in re.split(r";|&&", command.text):
        words = shlex.split(part, comments=True)
        while words and "=" in words[0] and not words[0].startswith("-"):
            words = words[1:]  # VAR=value prefixes
        if not words or Path(words[0]).name != "smedit":
            continue
        path, text = _help_options(words)
        for option in (w.split("=", 1)[0] for w in words if w.startswith("--")):
            assert option in text, f"{command.doc}: `{command.key}` names {option}, not an option of smedit {' '.join(path)}"


PREAMBLE = r"""
set -a  # a plain VAR=value line is as good as an export for the next command
curl() { local out code; out=$(command curl -w '\n%{http_code}' "$@") || { echo "__FAIL__ curl exit $?"; return 0; }
         code=${out##*$'\n'}; printf '%s\n' "${out%$'\n'*}"; [ "$code" -lt 400 ] || echo "__FAIL__ HTTP $code"; }
smedit() { command "$SMEDIT" "$@"; local rc=$?; [ "$rc" -eq 0 ] || echo "__FAIL__ exit $rc"; }
"""


def runnable(command: Command, server: RunningServer) -> str:
    """The command with the docs' placeholders bound to the test server."""
    host = server.url.removeprefix("http://")
    text = command.text.replace("http://127.0.0.1:8000", server.url).replace("localhost:8000", host)
    text = text.replace("smk_...", ADMIN_KEY).replace(".venv/bin/smedit", "smedit")
    return re.sub(r"^KEY=\.\.\.", f"KEY={ADMIN_KEY}", text)


def wait_idle(server: RunningServer, timeout: float = 60.0) -> None:
    """Until the worker has no job pending or running: a person reads one answer before the next command."""
    from app import repository as repo
    from app.db import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(server.services.sessions) as s:
            if not repo.pending_job_ids(s):
                return
        time.sleep(0.05)
    raise AssertionError("the worker did not go idle")


said: dict[str, str] = {}  # what a failing command printed, for the failure message


def run_document(commands_: list[Command], server: RunningServer, workdir: Path) -> dict[str, str]:
    """Run the commands in order, each in its own bash with the variables earlier ones exported;
    what a failing one printed after its ``__FAIL__`` marker, by command."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir), "SMEDIT": SMEDIT,
           "SMEDIT_DATA_DIR": str(server.services.settings.data_dir), "COLUMNS": "200"}
    failures: dict[str, str] = {}
    for command in commands_:
        script = f"{PREAMBLE}\n{runnable(command, server)}\necho __ENV__; env -0"
        done = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=300)
        out, _, exported = done.stdout.partition("__ENV__\n")
        assert exported, f"{command.doc}: `{command.key}` stopped its shell: {done.stderr[-1000:]}"
        env = dict(item.split("=", 1) for item in exported.split("\0") if "=" in item)
        for line in out.splitlines():
            if line.startswith("__FAIL__"):
                failures.setdefault(command.key, line.removeprefix("__FAIL__ "))
                said[command.key] = (out.split("__FAIL__")[0] + done.stderr)[-600:]
        wait_idle(server)
    return failures


@pytest.fixture
def seeded_server(server_factory) -> RunningServer:
    server = server_factory(served_model_name="smedit")
    client = server.client()
    for i in range(N_SEED):
        edit_id = client.post("/v1/edits", json={"prompt": f"Seed fact {i} is", "target": f"value {i}"}).json()["edit_ids"][0]
        assert wait_edit(client, edit_id)["status"] == "applied"
    return server


def test_every_documented_command_runs_as_written(seeded_server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "prices.csv").write_text("prompt,target,paraphrases\nThe Zentrix X2 costs,49 dollars,"
                                         "How much is the Zentrix X2?\n")
    (tmp_path / "prices.jsonl").write_text('{"prompt": "The Nimbus router costs", "target": "99 dollars"}\n')
    all_commands = [c for doc in DOCS for c in commands(doc)]
    assert len(all_commands) >= 40, "the docs' commands were not found"
    cannot = [c for c in all_commands if reason_cannot_run(c)]
    for command in cannot:
        check_options_exist(command)
    used = {start for start in CANNOT_RUN if any(c.key.startswith(" ".join(start.split())) for c in cannot)}
    assert used == set(CANNOT_RUN), f"CANNOT_RUN lists commands no document has: {set(CANNOT_RUN) - used}"

    failures: dict[str, str] = {}
    for doc in DOCS:
        todo = [c for c in all_commands if c.doc == doc.name and not reason_cannot_run(c)]
        if todo:
            failures.update(run_document(todo, seeded_server, tmp_path))
    expected = {key: outcome for key, (outcome, _) in EXPECTED_ERRORS.items()}
    unexpected = {k: v for k, v in failures.items() if expected.get(k) != v}
    assert not unexpected, "documented commands that fail:\n" + "\n".join(
        f"  {k}\n    -> {v}\n{said.get(k, '')}" for k, v in unexpected.items())
    missing = {k for k in expected if k not in failures}
    assert not missing, f"EXPECTED_ERRORS lists commands that now pass or are gone: {missing}"
    ran = len(all_commands) - len(cannot)
    assert ran >= 30, f"only {ran} documented commands ran"
