"""Crash points: off by default, a typo refused at start-up, and an armed one is a real SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from app.crash_points import POINTS, CrashPoints, parse


def test_parse() -> None:
    assert parse("") is None and parse("  ") is None
    assert parse("before_ack") == ("before_ack", 1)
    assert parse("after_edit_commit:3") == ("after_edit_commit", 3)
    for bad, says in (("after_comit", "unknown crash point"), ("before_ack:x", "whole number"),
                      ("before_ack:0", "at least 1")):
        with pytest.raises(ValueError, match=says):
            parse(bad)


def test_settings_refuse_an_unknown_point() -> None:
    from app.settings import Settings

    with pytest.raises(ValidationError, match="unknown crash point 'befor_ack'"):
        Settings(_env_file=None, crash_at="befor_ack")
    assert Settings(_env_file=None).crash_at == ""


def test_unarmed_and_other_points_do_nothing() -> None:
    for points in (CrashPoints(), CrashPoints("before_ack")):
        for name in POINTS:
            if points.armed is None or name != "before_ack":
                points.reach(name)
    assert CrashPoints("before_ack").hits == 0


def test_an_armed_point_kills_the_process_at_its_nth_hit() -> None:
    code = textwrap.dedent("""
        from app.crash_points import CrashPoints
        points = CrashPoints("during_recovery:2")
        points.reach("before_ack")
        points.reach("during_recovery")
        print("after first hit", flush=True)
        try:
            points.reach("during_recovery")
        finally:
            print("finally ran", flush=True)
        print("survived", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    assert proc.stdout.splitlines() == ["after first hit"]  # no finally, no exit handlers: as kill -9
