"""The CLI's edges: arguments and environment the host cannot encode are refused once, up
front (a usage error, exit 2, nothing done); output cut by a closed pipe ends quietly with the
command's own exit code (docs/cli.md#arguments-and-environment, docs/cli.md#output)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from keepflow.cli import main, text_problem
from keepflow.runtime.host import Host
from keepflow.scheduler.loop import SchedulerLoop
from keepflow.server.serve import StatusLine
from tests.integration.conftest import clock, host, pool, sink, target_db  # noqa: F401
from tests.security.test_terminal import RawCLI, _write, assert_safe_bytes

# ------------------------------------------------------------------------------ unit


@pytest.mark.parametrize(("text", "problem"), [
    ("ok é 日本 \x1b[2J", None),
    ("\udcff", "is not valid UTF-8 text (byte 0xff at character 1)"),
    ("ab\udc80", "is not valid UTF-8 text (byte 0x80 at character 3)"),
    ("\ud800", "is not valid UTF-8 text (lone surrogate U+D800 at character 1)"),
    ("a\x00", "contains a NUL character (at character 2)"),
])
def test_text_problem_names_what_cannot_be_encoded(text: str, problem: str | None) -> None:
    assert text_problem(text) == problem


@pytest.mark.parametrize(("args", "label"), [
    (["events", "a\x00b"], "argument WORKFLOW"),
    (["events", "wf", "--topic", "\x00"], "option --topic"),
    (["pause", "wf", "--reason", "why\x00not"], "option --reason"),
    (["event", "show", "wf", "t", "m\x00"], "argument MESSAGE_ID"),
])
def test_nul_characters_are_usage_errors(args: list[str], label: str, tmp_path: Path) -> None:
    """NUL cannot come through a real argv on Linux; other callers can hand one in."""
    home = tmp_path / "home"
    res = CliRunner(env={"KEEPFLOW_HOME": str(home), "KEEPFLOW_DATABASE_URL": None}).invoke(
        main, args)
    assert res.exit_code == 2, res.output
    assert f"keepflow: {label} contains a NUL character" in res.output
    assert not home.exists()


# ------------------------------------------------------------------------------ subprocess

BAD_ARGS: list[tuple[list[str | bytes], str]] = [
    (["events", b"\xff"], "argument WORKFLOW"),
    (["runs", b"\xed\xa0\x80"], "argument WORKFLOW"),  # a surrogate encoded as if UTF-8
    (["trigger", "wf", b"h\xc3"], "argument HANDLER"),  # a cut-off sequence
    (["event", "show", "wf", b"t\xfe", "m"], "argument TOPIC"),
    (["event", "skip", "wf", "t", b"m\x80"], "argument MESSAGE_ID"),
    (["run", "show", b"\x80\x81"], "argument RUN_ID"),
    (["retry", b"\xff"], "argument RUN_ID"),
    (["resolve", b"\xff", "--skip"], "argument RUN_ID"),
    (["approve", b"\xff"], "argument RUN_ID"),
    (["events", "wf", "--topic", b"\xff"], "option --topic"),
    (["events", "wf", "--status", b"\xff"], "option --status"),
    (["pause", "wf", "--reason", b"a\xffb"], "option --reason"),
    (["disable", "wf", "--reason", b"\xff"], "option --reason"),
    (["deploy", b"/tmp/\xff.js"], "argument FILE"),
    (["deploy", "x.js", "--name", b"\xff"], "option --name"),
    (["policy", "show", b"\xff"], "argument WORKFLOW"),
    (["serve", "--host", b"\xff"], "option --host"),
]


def _env(home: Path, **extra: str | bytes) -> dict[str, str | bytes]:
    env: dict[str, str | bytes] = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEPFLOW_")},
        "KEEPFLOW_HOME": str(home), "KEEPFLOW_ACTOR": "tester"}
    for name, value in extra.items():
        env[name] = value
    return env


def _run(args: list[str | bytes], env: dict[str, str | bytes]
         ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "keepflow.cli", *args], env=env,
                          capture_output=True, timeout=120, check=False)


def _assert_usage_error(res: subprocess.CompletedProcess[bytes], label: str, what: str) -> None:
    err = assert_safe_bytes(res.stderr, "stderr")
    assert res.returncode == 2, (res.returncode, err)
    assert res.stdout == b""
    assert err.startswith(f"keepflow: {label} {what}"), err
    assert "docs/cli.md#arguments-and-environment" in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.integration
def test_arguments_that_are_not_utf8_are_refused_before_anything_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args, label in BAD_ARGS:
        res = _run(args, _env(home))
        _assert_usage_error(res, label, "is not valid UTF-8 text (byte 0x")
    assert not home.exists()  # refused before the store was even opened


@pytest.mark.integration
@pytest.mark.parametrize(("name", "value", "args"), [
    ("KEEPFLOW_HOME", b"/tmp/\xff", ["workflows"]),
    ("KEEPFLOW_DATABASE_URL", b"sqlite:////tmp/\xff.db", ["workflows"]),
    ("KEEPFLOW_ACTOR", b"me\xfe", ["inbox"]),
    ("KEEPFLOW_API_TOKEN", b"\xff", ["status"]),
])
def test_environment_that_is_not_utf8_is_refused(name: str, value: bytes, args: list[str],
                                                 tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = _run(list(args), _env(home, **{name: value}))
    _assert_usage_error(res, f"environment variable {name}", "is not valid UTF-8 text")
    assert not home.exists()


@pytest.mark.integration
def test_user_is_checked_only_when_it_becomes_the_actor(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home, USER=b"\xffuser")
    del env["KEEPFLOW_ACTOR"]
    _assert_usage_error(_run(["workflows"], env), "environment variable USER",
                        "is not valid UTF-8 text")
    env["KEEPFLOW_ACTOR"] = "tester"
    assert _run(["init"], env).returncode == 0
    ok = _run(["workflows", "--json"], env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == b"[]"


MANY = """
export default Keep.workflow({
  name: "many",
  topics: { "t": {} },
  producers: {
    seed: async (ctx, state) => {
      for (let n = 0; n < 600; n++) {
        await ctx.publish("t", { messageId: "m" + n, title: "event " + n + " " + "x".repeat(150),
                                 payload: { n } });
      }
      return null;
    },
    boom: async (ctx, state) => { throw new Error("it broke"); },
  },
  consumers: {
    read: Keep.consumer({
      subscribe: ["t"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""


@pytest.mark.integration
def test_bad_text_changes_nothing_in_the_store(tmp_path: Path, store_url: str) -> None:
    kf = RawCLI(tmp_path / "home", store_url)
    kf("deploy", _write(tmp_path, "many.js", MANY))
    res = kf.raw("pause", "many", "--reason", b"a\xffb")
    _assert_usage_error(res, "option --reason", "is not valid UTF-8 text (byte 0xff")
    env = {**kf.env, "KEEPFLOW_ACTOR": "\udcff"}  # os.fsencode gives the byte 0xff back
    _assert_usage_error(kf.raw("disable", "many", env=env), "environment variable KEEPFLOW_ACTOR",
                        "is not valid UTF-8 text")
    [wf] = kf.json("workflows")
    assert (wf["status"], wf["statusReason"]) == ("active", None)
    kf("pause", "many", "--reason", "réunion ✓")  # valid text still works
    [wf] = kf.json("workflows")
    assert (wf["status"], wf["statusReason"]) == ("paused", "réunion ✓")


# ------------------------------------------------------------------------------ closed pipes


def _closed_pipe() -> int:
    """The write end of a pipe whose reader has already gone: the first write gets EPIPE."""
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.integration
def test_output_into_a_closed_pipe_ends_quietly_with_the_commands_exit_code(
        tmp_path: Path, store_url: str) -> None:
    kf = RawCLI(tmp_path / "home", store_url)
    kf("deploy", _write(tmp_path, "many.js", MANY))
    seed = kf.json("trigger", "many", "seed")
    listing, _ = kf("events", "many", "--limit", "10000")
    assert len(listing.encode()) > 100 * 1024  # more than a pipe buffer (64 KiB) holds

    # 1. A reader that takes one byte and leaves while keepflow is still writing.
    for args in (["events", "many", "--limit", "10000"],
                 ["events", "many", "--limit", "10000", "--json"],
                 ["run", "show", seed["id"]]):
        with subprocess.Popen([sys.executable, "-m", "keepflow.cli", *args], env=kf.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            assert len(proc.stdout.read(1)) == 1
            proc.stdout.close()
            err = proc.stderr.read()
            assert proc.wait(timeout=120) == 0, err
        assert err == b"", err  # no "internal error", no "Exception ignored" at exit

    # 2. The shell's own `| head -c1`.
    errfile = tmp_path / "err"
    shell = subprocess.run(
        ['bash', '-c', '"$0" -m keepflow.cli events many --limit 10000 2>"$1" | head -c1 '
         '>/dev/null; exit "${PIPESTATUS[0]}"', sys.executable, str(errfile)],
        env=kf.env, timeout=120, check=False)
    assert shell.returncode == 0
    assert errfile.read_bytes() == b""

    # 3. A reader gone before the first line: the exit code still tells what happened.
    for args, code in ((["trigger", "many", "boom"], 3), (["runs", "many"], 0),
                       (["trigger", "many", "boom", "--json"], 3), (["runs", "nope"], 1)):
        w = _closed_pipe()
        try:
            res = subprocess.run([sys.executable, "-m", "keepflow.cli", *args], env=kf.env,
                                 stdout=w, stderr=subprocess.PIPE, timeout=120, check=False)
        finally:
            os.close(w)
        assert res.returncode == code, (args, res.stderr)
        if code != 1:
            assert res.stderr == b"", res.stderr
        else:
            assert res.stderr.startswith(b"keepflow: no workflow named 'nope'"), res.stderr
        w = _closed_pipe()  # stderr cut as well: still no crash, same exit code
        try:
            res = subprocess.run([sys.executable, "-m", "keepflow.cli", *args], env=kf.env,
                                 stdout=w, stderr=w, timeout=120, check=False)
        finally:
            os.close(w)
        assert res.returncode == code, args


@pytest.mark.integration
def test_serve_status_line_into_a_closed_pipe_does_not_stop_the_loop(
        host: Host) -> None:  # noqa: F811
    """`keepflow serve 2>&1 | head`: the scheduler loop calls the status line on every turn;
    once its reader is gone it goes quiet instead of raising into the loop."""
    loop = SchedulerLoop(host, concurrency=1)
    w = _closed_pipe()
    stream = os.fdopen(w, "w")
    try:
        status = StatusLine(loop, stream, every=0.0)
        status.tick()  # EPIPE: swallowed
        status.tick()  # and not tried again
        assert status.text().startswith("keepflow: 0 workflows")
        with pytest.raises(BrokenPipeError):  # the pipe really is broken
            os.write(w, b"x")
    finally:
        devnull = os.open(os.devnull, os.O_WRONLY)  # let what is still buffered drain
        os.dup2(devnull, w)
        os.close(devnull)
        stream.close()
