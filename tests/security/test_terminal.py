"""Untrusted text never drives the operator's terminal (docs/security.md#terminal-output).

Unit tests of :mod:`keepflow.terminal`, then the real ``keepflow`` command as a subprocess
against a store filled with hostile titles, messageIds, payloads, logs, failure messages,
mutation descriptions and a hostile server's error body — all created through real workflow
runs — asserting that no output byte can control a terminal and that ``--json`` gives back
the exact strings. Closed pipes (``keepflow … | head``) are in tests/security/test_cli_input.py.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import unicodedata
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import keepflow.cli
from keepflow.server.serve import JsonLines, TextLines
from keepflow.terminal import (
    Shown,
    dumps_json,
    is_unsafe,
    json_preview,
    visible,
    visible_data,
    visible_line,
    visible_lines,
)

# ------------------------------------------------------------------------------ hostile text

#: Every class of terminal-driving text: CSI (clear, cursor home, colour), OSC 52 (clipboard),
#: OSC 8 (hyperlink), CR and LF forging a keepflow line, BS, DEL, C1 (NEL, one-byte CSI),
#: bidi override and isolate, zero-width and BOM, line/paragraph separators, a tag character
#: (invisible ASCII smuggling) — and a literal backslash escape that must stay distinguishable.
HOSTILE = ("\x1b[2J\x1b[1;1H\x1b[31mred\x1b]52;c;ZXZpbA==\x07"
           "\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\"
           "\rkeepflow: run approved\nkeepflow: forged line\x08\x7f\u0085\u009b31m"
           "\u202eRTL\u2066iso\u2069\u200b\ufeff\u2028\u2029\U000e0041 \\x1b end")

BIDI = {*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C}


def forbidden(text: str) -> list[str]:
    """Code points that may not reach a terminal: C0 except the layout newline, DEL, C1,
    bidi controls, any other format character, line/paragraph separators, lone surrogates."""
    bad = []
    for ch in text:
        cp = ord(ch)
        if ch == "\n":
            continue
        if (cp < 0x20 or 0x7F <= cp <= 0x9F or cp in BIDI or 0xD800 <= cp <= 0xDFFF
                or unicodedata.category(ch) in ("Cf", "Zl", "Zp")):
            bad.append(f"U+{cp:04X}")
    return bad


def assert_safe_bytes(raw: bytes, what: str) -> str:
    """The bytes a command wrote are strict UTF-8 and control nothing; returns the text."""
    for b in raw:
        assert b >= 0x20 or b == 0x0A, (what, hex(b), raw[:300])
        assert b != 0x7F, (what, raw[:300])
    text = raw.decode("utf-8")  # strict: a lone surrogate or stray byte would fail here
    assert forbidden(text) == [], (what, forbidden(text)[:10], text[:300])
    return text


def unvisible(shown: str) -> str:
    """Read a :func:`visible` value back: proves the escaping loses nothing."""
    named = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}

    def one(m: re.Match[str]) -> str:
        body = m.group(1)
        if body[0] in named:
            return named[body[0]]
        return chr(int(body[1:], 16))

    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[nrt\\])", one, shown)


# ------------------------------------------------------------------------------ unit: visible


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b[2J", "\\x1b[2J"),
    ("a\rb\nc\td", "a\\rb\\nc\\td"),
    ("\x00\x07\x08\x0b\x0c\x1f", "\\x00\\x07\\x08\\x0b\\x0c\\x1f"),
    ("\x7f", "\\x7f"),
    ("\u0085\u009b\u0080\u009f", "\\x85\\x9b\\x80\\x9f"),
    ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),
    ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
    ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
    ("\u200b\u200d\u2060\ufeff\u00ad", "\\u200b\\u200d\\u2060\\ufeff\\xad"),
    ("\u2028\u2029", "\\u2028\\u2029"),
    ("\U000e0041\U000e007f", "\\U000e0041\\U000e007f"),
    ("\ud800x\udcff", "\\ud800x\\udcff"),
    ("C:\\new", "C:\\\\new"),
    ("\\x1b", "\\\\x1b"),
])
def test_visible_escapes_every_control_and_format_class(raw: str, shown: str) -> None:
    assert visible(raw) == shown
    assert forbidden(visible(raw)) == []
    assert unvisible(visible(raw)) == raw


def test_every_c0_c1_and_del_code_point_is_escaped() -> None:
    for cp in [*range(0x00, 0x20), *range(0x7F, 0xA0)]:
        out = visible(chr(cp))
        assert out.startswith("\\"), hex(cp)
        assert out.isascii(), hex(cp)
        assert out.isprintable(), hex(cp)
        assert unvisible(out) == chr(cp)


def test_printable_text_is_kept_as_it_is() -> None:
    text = "Café 日本語 Ελληνικά עברית العربية 😀 a\u00a0b «x» — ✓ 'q' \"d\""
    assert visible(text) == text
    assert visible_line(text) == text
    assert visible("") == ""


def test_an_escape_written_as_text_stays_distinguishable_from_the_character() -> None:
    assert visible("\\x1b") != visible("\x1b")
    assert visible("\\u202e") != visible("\u202e")
    assert visible("\\\x1b") == "\\\\\\x1b"


def test_visible_is_applied_once_only() -> None:
    once = visible(HOSTILE)
    assert isinstance(once, Shown)
    assert visible(once) == once
    assert visible_data({"a": once}) == {"a": once}
    assert forbidden(once) == []
    assert unvisible(once) == HOSTILE
    assert "keepflow: run approved" in once  # still readable, on the same line
    assert "\\rkeepflow: run approved\\nkeepflow: forged line" in once


@given(st.text())
def test_visible_of_any_text_is_safe_and_reversible(text: str) -> None:
    out = visible(text)
    assert forbidden(out) == []
    assert unvisible(out) == text
    assert visible(out) == out


@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_visible_keeps_all_safe_text(text: str) -> None:
    if any(is_unsafe(c) or c == "\\" for c in text):
        return
    assert visible(text) == text


def test_long_strings_are_escaped_completely_and_quickly() -> None:
    chunk = "x" * 97 + "\x1b\u202e\n"
    text = chunk * 20_000  # 2 MB
    started = time.monotonic()
    out = visible(text)
    assert time.monotonic() - started < 2.0
    assert out.count("\\x1b") == 20_000
    assert out.count("\\u202e") == 20_000
    assert forbidden(out) == []
    assert unvisible(out) == text
    plain = "é" * 1_000_000
    assert visible(plain) == plain


def test_visible_line_keeps_backslashes_and_shows_controls() -> None:
    message = "no workflow named 'a\\x1bb' " + "\x1b]52;c;QQ==\x07\nkeepflow: forged"
    out = visible_line(message)
    assert out == "no workflow named 'a\\x1bb' \\x1b]52;c;QQ==\\x07\\nkeepflow: forged"
    assert "\n" not in out


def test_visible_lines_keeps_only_the_layout_newline() -> None:
    out = visible_lines("line one\nline two \x1b[2J\r\u202e\u2028 \\n")
    assert out == "line one\nline two \\x1b[2J\\r\\u202e\\u2028 \\n"
    assert forbidden(out) == []


def test_visible_data_transforms_every_string_deeply() -> None:
    class Odd:
        def __str__(self) -> str:
            return "odd\x1b[2J"

    data = {"k\x1b": ["v\r", ("t\u202e", 3), {"n": None, "b": True, "f": 1.5}], "o": Odd()}
    out = visible_data(data)
    assert out == {"k\\x1b": ["v\\r", ("t\\u202e", 3), {"n": None, "b": True, "f": 1.5}],
                   "o": "odd\\x1b[2J"}
    inner = out["k\\x1b"]
    assert isinstance(inner[1], tuple)
    assert f"{inner[2]['f']:.1f}" == "1.5"  # numbers stay numbers for formatting


# ------------------------------------------------------------------------------ unit: JSON


def _json_cases() -> list[Any]:
    return [
        HOSTILE,
        {"title": HOSTILE, "keys\u202e": [HOSTILE, 1, None, True, 2.5]},
        {"lone": "\ud800", "low": "x\udcffy", "sep": "\u2028\u2029", "c1": "\u0085\u009b"},
        ["\U000e0041 tag", "\x7f", "é日本😀"],
    ]


@pytest.mark.parametrize("value", _json_cases())
@pytest.mark.parametrize("indent", [2, None])
def test_dumps_json_round_trips_and_is_safe_to_print(value: Any, indent: int | None) -> None:
    text = dumps_json(value, indent=indent)
    assert json.loads(text) == value
    assert forbidden(text) == []
    text.encode("utf-8")  # strict: no lone surrogate left in the text
    if indent is None:
        assert "\n" not in text


def test_dumps_json_keeps_readable_text_and_escapes_as_json() -> None:
    assert dumps_json("é日本😀", indent=None) == '"é日本😀"'
    assert dumps_json("\u202e\x7f\u0085", indent=None) == '"\\u202e\\u007f\\u0085"'
    assert dumps_json("\U000e0041", indent=None) == '"\\udb40\\udc41"'
    assert dumps_json("\ud800", indent=None) == '"\\ud800"'


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
                    max_leaves=20))
def test_dumps_json_of_any_data_parses_back_to_it(value: Any) -> None:
    text = dumps_json(value)
    assert forbidden(text) == []
    parsed = json.loads(text)
    # JSON cannot tell a lone high+low surrogate pair from the character they form.
    assert parsed == value or "\\ud" in text


def test_json_preview_is_one_safe_line() -> None:
    preview = json_preview({"s": HOSTILE * 10}, 100)
    assert len(preview) == 100
    assert isinstance(preview, Shown)
    assert visible(preview) == preview  # not escaped a second time
    assert forbidden(preview) == []
    assert "\n" not in preview


# ------------------------------------------------------------------------------ unit: serve logs


def _record(message: str, fields: dict[str, Any]) -> logging.LogRecord:
    record = logging.LogRecord("keepflow", logging.WARNING, __file__, 1, "%s", (message,), None)
    record.fields = fields
    return record


def test_serve_text_log_lines_show_hostile_fields_on_one_line() -> None:
    line = TextLines().format(_record("run of wf.h stopped: " + HOSTILE, {
        "handler": "a b", "error": HOSTILE, HOSTILE: 1, "quote": 'x="y"', "run": "01ABC"}))
    assert forbidden(line) == []
    assert "\n" not in line
    assert line.endswith(" run=01ABC")  # a hostile value cannot forge a later field
    assert ' handler="a b" ' in line
    assert ' quote="x=\\"y\\"" ' in line
    assert "\\x1b]52;c;ZXZpbA==\\x07" in line


def test_serve_json_log_lines_are_exact_and_safe() -> None:
    line = JsonLines().format(_record("event " + HOSTILE, {"error": HOSTILE, "n": 3}))
    assert forbidden(line) == []
    assert "\n" not in line
    data = json.loads(line)
    assert (data["event"], data["error"], data["n"]) == ("event " + HOSTILE, HOSTILE, 3)


# ------------------------------------------------------------------------------ structure


def test_the_cli_writes_only_through_its_one_output_function() -> None:
    """No human printer can print raw text: only ``_say`` writes, and every command's
    printer gets its data from ``_emit`` (through ``visible_data``)."""
    tree = ast.parse(Path(keepflow.cli.__file__).read_text(encoding="utf-8"))
    writers = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if name in ("click.echo", "print", "click.secho", "sys.stdout.write",
                            "sys.stderr.write", "click.get_text_stream", "json.dumps"):
                    writers.append((fn.name, name))
    assert {w for w in writers if w[0] != "_say"} == set(), writers
    assert ("_say", "click.echo") in writers


def test_every_command_is_checked_and_reported_by_the_same_class() -> None:
    def commands(group: Any) -> Iterator[Any]:
        for cmd in group.commands.values():
            if hasattr(cmd, "commands"):
                assert isinstance(cmd, keepflow.cli._Group), cmd.name
                yield from commands(cmd)
            else:
                yield cmd

    found = list(commands(keepflow.cli.main))
    assert len(found) >= 20
    for cmd in found:
        assert isinstance(cmd, keepflow.cli._Command), cmd.name


# ------------------------------------------------------------------------------ the real CLI

H_JS = json.dumps(HOSTILE)  # a JSON string literal is a JavaScript string literal

HOSTILE_WF = f"""
const H = {H_JS};
export default Keep.workflow({{
  name: "hostile",
  topics: {{ "t": {{}} }},
  producers: {{
    seed: async (ctx, state) => {{
      ctx.log(H);
      console.warn("warn " + H);
      for (const n of [1, 2, 3]) {{
        await ctx.publish("t", {{ messageId: n + H, title: "T" + n + H,
                                  payload: {{ s: H, list: [H, n] }} }});
      }}
      return {{ h: H }};
    }},
    boom: async (ctx, state) => {{ throw new Error("E" + H); }},
  }},
  consumers: {{
    send: Keep.consumer({{
      subscribe: ["t"],
      async prepare(ctx) {{
        const [e] = await ctx.peek("t", {{ limit: 1 }});
        if (!e) return {{ reservations: [], data: {{}} }};
        ctx.log("prepare " + H);
        return {{ reservations: [{{ topic: "t", ids: [e.messageId] }}], data: e.payload }};
      }},
      async mutate(ctx, prepared) {{
        await ctx.api.post({{ url: "/o%1b%5b2J%e2%80%ae%0d%0aforged", json: {{ s: H }} }});
      }},
      async next(ctx, prepared, mutation) {{ return {{ last: H }}; }},
    }}),
  }},
}});
"""

#: Refused at deploy: the findings quote the script's hostile topic name.
BAD_WF = HOSTILE_WF.replace('ctx.publish("t", {', 'ctx.publish("t" + H, {').replace(
    'subscribe: ["t"]', f'subscribe: [{H_JS}]')


class HostileServer:
    """A loopback server that answers every mutation with 422 and a hostile body."""

    def __init__(self) -> None:
        body = ("rejected: " + HOSTILE).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(422, "Unprocessable")
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RawCLI:
    """The real ``keepflow`` command as a subprocess, output kept as bytes."""

    def __init__(self, home: Path, database_url: str | None) -> None:
        self.home = home
        self.env = {**os.environ, "KEEPFLOW_HOME": str(home), "KEEPFLOW_SANDBOX_WORKERS": "1",
                    "KEEPFLOW_ACTOR": "tester"}
        for name in ("KEEPFLOW_FAULTS", "KEEPFLOW_DEBUG", "KEEPFLOW_DATABASE_URL"):
            self.env.pop(name, None)
        if database_url:
            self.env["KEEPFLOW_DATABASE_URL"] = database_url
            home.mkdir(parents=True, exist_ok=True)  # a home, as `keepflow init` leaves it
        self.seen: list[tuple[str, str]] = []  # (command, stdout + stderr) of every call

    def raw(self, *args: str | bytes, env: dict[str, str] | None = None, **kw: Any
            ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", "keepflow.cli", *args],
                              env=env or self.env, capture_output=True, timeout=180,
                              check=False, **kw)

    def __call__(self, *args: str, code: int | None = 0) -> tuple[str, str]:
        """Run; check both streams are safe to show; return (stdout, stderr) as text."""
        res = self.raw(*args)
        what = " ".join(a[:20] for a in args)
        out = assert_safe_bytes(res.stdout, what + " (stdout)")
        err = assert_safe_bytes(res.stderr, what + " (stderr)")
        assert "Traceback" not in err, err
        if code is not None:
            assert res.returncode == code, (what, res.returncode, out, err)
        self.seen.append((what, out + err))
        return out, err

    def json(self, *args: str, code: int | None = 0) -> Any:
        out, _ = self(*args, "--json", code=code)
        return json.loads(out)


@pytest.fixture
def hostile_server() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.stop()


@pytest.fixture
def kf(tmp_path: Path, store_url: str, hostile_server: HostileServer) -> RawCLI:
    cli = RawCLI(tmp_path / "home", store_url)
    cli("init")
    (cli.home / "connections.toml").write_text(
        f'[connections.api]\ntype = "http"\nbase_url = "{hostile_server.url}"\n',
        encoding="utf-8")
    (cli.home / "policy.toml").write_text(
        '[approvals]\nrequire = ["api.post"]\n[retry]\nmax_attempts = 1\n', encoding="utf-8")
    return cli


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


SHOWN = visible(HOSTILE)


@pytest.mark.integration
@pytest.mark.slow  # ~70 `keepflow` processes: started first (tests/conftest.py)
def test_every_command_shows_hostile_data_visibly_and_json_exactly(
        kf: RawCLI, tmp_path: Path) -> None:
    _, err = kf("deploy", _write(tmp_path, "bad.js", BAD_WF), code=1)
    assert "error[undeclared-topic]" in err
    assert visible(HOSTILE)[:20] in err
    out, _ = kf("deploy", _write(tmp_path, "hostile.js", HOSTILE_WF))
    assert "hostile: version 1.0 (created)" in out

    seed = kf.json("trigger", "hostile", "seed")
    assert seed["status"] == "committed"
    ids = [f"{n}{HOSTILE}" for n in (1, 2, 3)]

    # --- the consumer waits for approval of its mutation: drain, inbox, approve
    out, _ = kf("drain", code=4)
    assert "send: suspended" in out
    inbox = kf.json("inbox")
    [waiting] = [i for i in inbox if i["kind"] == "approval"]
    run_id = waiting["run"]
    out, _ = kf("inbox")
    assert "T1" + SHOWN in out or SHOWN in out
    out, _ = kf("approve", run_id, code=3)  # the hostile server refuses it with its body
    assert "failed" in out
    assert "rejected: " + SHOWN[:40] in out
    failed = kf.json("run", "show", run_id)
    assert failed["status"] == "failed"
    assert HOSTILE in failed["failure"]["message"] or "rejected" in failed["failure"]["message"]
    assert [lg["message"] for lg in failed["logs"]] == ["prepare " + HOSTILE]
    assert failed["reservations"][0]["title"] == "T1" + HOSTILE
    out, _ = kf("run", "show", run_id)
    assert "log [info] prepare " + SHOWN in out
    # The mutation's description keeps the path as sent, percent-encoded: inert everywhere.
    assert "/o%1b%5b2J%e2%80%ae%0d%0aforged" in out
    kf("retry", run_id, code=None)
    kf("resolve", run_id, "--skip", code=None)

    # --- a second consumer run, rejected
    kf("drain", code=None)
    inbox = kf.json("inbox")
    for item in inbox:
        if item["kind"] == "approval":
            kf("reject", item["run"], code=None)

    # --- a failing producer: its error message comes from the script
    out, _ = kf("trigger", "hostile", "boom", code=3)
    assert "Error: E" + SHOWN in out
    boom = kf.json("trigger", "hostile", "boom", code=3)
    assert boom["failureMessage"].startswith("Error: E" + HOSTILE)

    # --- listings, human and JSON
    events = kf.json("events", "hostile")
    assert sorted(e["messageId"] for e in events) == sorted(ids)
    assert sorted(e["title"] for e in events) == sorted(f"T{n}{HOSTILE}" for n in (1, 2, 3))
    out, _ = kf("events", "hostile")
    assert "T3" + SHOWN in out
    assert out.count("\n") == len(events) + 1
    shown = kf.json("event", "show", "hostile", "t", ids[2])
    assert shown["payload"] == {"s": HOSTILE, "list": [HOSTILE, 3]}
    out, _ = kf("event", "show", "hostile", "t", ids[2])
    assert "payload: " in out
    assert "\\u001b]52;c;ZXZpbA==" in out
    out, _ = kf("event", "skip", "hostile", "t", ids[2], code=None)
    runs = kf.json("runs", "hostile")
    out, _ = kf("runs", "hostile")
    assert out.count("\n") == len(runs) + 1  # one line per run, whatever the messages hold
    seed_run = kf.json("run", "show", seed["id"])
    assert [lg["message"] for lg in seed_run["logs"]] == [HOSTILE, "warn " + HOSTILE]
    assert [e["messageId"] for e in seed_run["published"]] == ids
    out, _ = kf("run", "show", seed["id"])
    assert f"log [info] {SHOWN}\n" in out
    assert f"log [warn] warn {SHOWN}\n" in out
    for args in (("status",), ("notifications", "--all"), ("policy", "show", "hostile")):
        kf(*args)
        kf.json(*args)
    kf("run", "show", boom["id"])

    # --- a person's own text: pause reasons, shown back visibly
    kf("pause", "hostile", "--reason", HOSTILE)
    [wf] = kf.json("workflows")
    assert wf["statusReason"] == HOSTILE
    out, _ = kf("workflows")
    assert SHOWN in out
    assert out.count("\n") == 1
    kf("resume", "hostile")
    kf("disable", "hostile", "--reason", "x" + HOSTILE)
    kf("resume", "hostile")

    # --- error lines quote what they were given: still one visible line
    refused: list[tuple[str, ...]] = [
        ("event", "show", "hostile", "t", "nope" + HOSTILE), ("trigger", "hostile", "h" + HOSTILE),
        ("runs", "w" + HOSTILE), ("run", "show", HOSTILE),
        ("events", "hostile", "--status", HOSTILE)]
    for bad in refused:
        _, err = kf(*bad, code=None)
        assert err.startswith("keepflow: "), err
        assert err.count("\n") == 1, err
        assert "\\x1b" in err

    printed = "".join(text for _, text in kf.seen)
    assert printed.count("\\x1b]52;c;ZXZpbA==") > 20  # the hostile text was shown, escaped


@pytest.mark.integration
def test_old_data_with_lone_surrogates_prints_without_crashing(tmp_path: Path) -> None:
    """Values stored before the sandbox refused lone surrogates (JSON columns can hold them):
    shown as ``\\udXXX``, and ``--json`` gives them back. SQLite only: PostgreSQL's JSONB
    never accepted them."""
    import sqlite3

    cli = RawCLI(tmp_path / "home", None)
    cli("init")
    good = HOSTILE_WF.replace("ctx.api.post", "ctx.http.post")
    cli("deploy", _write(tmp_path, "hostile.js", good))
    seed = cli.json("trigger", "hostile", "seed")
    boom = cli.json("trigger", "hostile", "boom", code=3)
    with sqlite3.connect(cli.home / "keepflow.db") as db:
        db.execute("UPDATE events SET payload = ?", ('{"s": "\\ud800 and \\udcff"}',))
        failure = db.execute("SELECT failure FROM runs WHERE id = ?", (boom["id"],)
                             ).fetchone()[0]
        db.execute("UPDATE runs SET failure = ? WHERE id = ?",
                   (failure.replace('"message": "', '"message": "\\udc9b[2J'), boom["id"]))
    [event] = cli.json("events", "hostile")[:1]
    shown = cli.json("event", "show", "hostile", "t", event["messageId"])
    assert shown["payload"] == {"s": "\ud800 and \udcff"}
    out, _ = cli("event", "show", "hostile", "t", event["messageId"])
    assert '"s": "\\ud800 and \\udcff"' in out
    out, _ = cli("runs", "hostile")
    assert "\\udc9b[2J" in out
    detail = cli.json("run", "show", boom["id"])
    assert detail["failure"]["message"].startswith("\udc9b[2J")
    out, _ = cli("run", "show", boom["id"])
    assert "\\udc9b[2J" in out
    cli("inbox")
    cli("run", "show", seed["id"])
