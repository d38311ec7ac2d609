"""Property-based fuzz of the HTTP API a real `keepflow serve` publishes (docs/api.md,
docs/security.md#the-api): schemathesis generates requests, valid and invalid, for every
operation of ``/api/openapi.json`` as the running server serves it, on SQLite and PostgreSQL.

The server listens on loopback and requires an access token (``KEEPFLOW_API_TOKEN``). Its home
is seeded: ``ops`` (two versions; a failed run that holds the workflow), ``gate`` (a run waiting
for approval), events on their topics, an inbound token. Some of the time a generated path or
query value is replaced by one that means something — a seeded workflow, topic, event, handler,
run or version (together, so they name one real object), a route's own statuses, a date in any
zone or an event cursor, with their type's bounds as a fuzz dictionary has them — so requests
also get past the lookups and parsers to the code behind them.

The properties, for every generated request:

* with the access token (and the CSRF header on POST; an inbound event with its workflow's own
  token): never a 5xx; every answer is JSON, and every error has keepflow's shape
  ``{"error": {"code", "message", ...}}`` with a code its status stands for (docs/api.md
  "Errors"), a 422 naming its ``field``;
* without a token or with a wrong one: ``401 unauthorized`` for everything but inbound events
  (which carry their own token instead, and are refused in the same shape);
* the server logs no traceback and no error.

The fuzz changes the seeded state as it goes (pause, disable, retry, skip, replace the inbound
token...): the properties hold in every state, so no test depends on another or on the order.
The examples are derandomized and the operations run in the schema's order: every run sends the
same requests (but for the seeded ids, which are new each time).
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeAlias

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode, HookContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err, Ok

from tests.acceptance.test_api_operations import CSRF, SCRIPT, until
from tests.acceptance.test_first_hour import _env, kf
from tests.acceptance.test_serve import Server
from tests.support.sink import Sink

pytestmark = pytest.mark.integration

Operation: TypeAlias = APIOperation[Any, Any, Any, Any]
AnyCase: TypeAlias = Case[Any]

ACCESS_TOKEN = "kfa_fuzz-access-token-7c1d"
WRONG_TOKEN = "kfa_fuzz-access-token-7c1e"
WORKFLOWS = ("ops", "gate")

#: Examples per operation with the access token: a base and more for each parameter (path,
#: query, body) it takes; an operation without any is done after its one request. Without the
#: token every answer is the same refusal, so a few show it.
EXAMPLES, PER_PARAMETER = 20, 8
ANONYMOUS_EXAMPLES = 6

#: The workflow of the API tests: a job that always fails stops it (a failed run to answer).
OPS = SCRIPT

GATE = """
export default Keep.workflow({
  name: "gate",
  topics: { "ship": {} },
  producers: {
    async add(ctx, state) {
      const n = (state?.n ?? 0) + 1;
      await ctx.publish("ship", { messageId: `ship-${n}`, title: `Ship ${n}`, payload: { n } });
      return { n };
    },
  },
  consumers: {
    ship: Keep.consumer({
      subscribe: ["ship"],
      async prepare(ctx) {
        const [e] = await ctx.peek("ship", { limit: 1 });
        if (!e) return { reservations: [] };
        return { reservations: [{ topic: "ship", ids: [e.messageId] }], data: e.messageId };
      },
      async mutate(ctx, prepared) {
        await ctx.api.post({ url: "/orders", json: { id: prepared.data },
                             reconcile: { url: "/records/{idempotencyKey}" } });
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
"""

#: The error codes each status may carry (docs/api.md "Errors").
ERROR_CODES: dict[int, set[str]] = {
    400: {"usage"}, 401: {"unauthorized"}, 403: {"host", "csrf", "forbidden"},
    404: {"not_found"}, 405: {"usage"}, 409: {"conflict", "run_changed"},
    413: {"too_large"}, 422: {"invalid_input"},
}
#: What the server's log must never show: an internal error.
INTERNAL = re.compile(r'Traceback \(most recent call last\)|Exception in ASGI application|'
                      r'^(ERROR|CRITICAL):|"level": "(error|critical)"', re.M)
INBOUND = re.compile(r"^/api/workflows/[^/]+/topics/[^/]+/events$")
#: Stands for a parameter the generated request leaves out.
_ABSENT = object()


@dataclass
class World:
    """The running server, what it was seeded with, and the fuzz's view of its tokens."""

    url: str
    log: Path
    session: requests.Session
    #: Values that mean something, by parameter name (``route:name`` for one route's own).
    meaningful: dict[str, st.SearchStrategy[Any]] = field(default_factory=dict)
    #: Seeded objects by the parameters that name them together: {name, topic, message_id},
    #: {name, handler}, {name, label}, {run_id}.
    objects: list[dict[str, str]] = field(default_factory=list)
    #: Each workflow's inbound token as the fuzz last made it.
    inbound: dict[str, str] = field(default_factory=dict)
    log_seen: int = 0

    def api(self, method: str, path: str, **params: Any) -> Any:
        res = self.session.request(method, self.url + path, params=params, timeout=60,
                                   headers={"Authorization": f"Bearer {ACCESS_TOKEN}", **CSRF})
        assert res.status_code in (200, 202), (method, path, res.status_code, res.text)
        return res.json()

    def inbound_token(self, workflow: str) -> str:
        if workflow not in WORKFLOWS:
            return "kfi_no-such-token"
        if workflow not in self.inbound:
            self.inbound[workflow] = self.api(
                "POST", f"/api/workflows/{workflow}/inbound-token")["token"]
        return self.inbound[workflow]

    def internal_errors(self) -> str | None:
        """What the log gained since the last look, if it shows an internal error."""
        text = self.log.read_text(errors="replace")
        new, self.log_seen = text[self.log_seen:], len(text)
        return new if INTERNAL.search(new) else None


def _seed(world: World) -> None:
    """Runs, events and a waiting approval; then what the fuzz draws meaningful values from."""
    world.api("POST", "/api/workflows/gate/trigger/add", wait="true")
    world.api("POST", "/api/workflows/ops/trigger/add", wait="true")
    until(lambda: {i["kind"] for i in world.api("GET", "/api/inbox")} >= {"failed_run",
                                                                          "approval"},
          "a failed run and an approval in the inbox")
    runs = [r["id"] for wf in WORKFLOWS for r in world.api("GET", f"/api/workflows/{wf}/runs")]
    events = [{"name": wf, "topic": e["topic"], "message_id": e["messageId"]}
              for wf in WORKFLOWS for e in world.api("GET", f"/api/workflows/{wf}/events")]
    versions = [{"name": wf, "label": v["version"]}
                for wf in WORKFLOWS for v in world.api("GET", f"/api/workflows/{wf}/versions")]
    handlers = [{"name": "ops", "handler": "add"}, {"name": "ops", "handler": "work"},
                {"name": "gate", "handler": "add"}, {"name": "gate", "handler": "ship"}]
    world.objects += [*events, *versions, *handlers, *({"run_id": r} for r in runs)]
    named: dict[str, list[str]] = {
        "name": list(WORKFLOWS), "workflow": list(WORKFLOWS),
        "handler": ["add", "work", "ship"], "topic": ["job", "ship"],
        "message_id": sorted({e["message_id"] for e in events}), "run_id": runs,
        "label": [v["label"] for v in versions], "diffFrom": [v["label"] for v in versions],
        "action": ["workflow.deploy", "workflow.inbound_token", "run.retry", "event.skip"],
        # Each route's own statuses: an event's, a ledger entry's, a notification's.
        "status": ["pending", "consumed", "skipped"],
        "ledger:status": ["in_flight", "applied", "failed", "needs_reconcile", "indeterminate"],
        "notifications:status": ["open", "resolved", "all"],
    }
    world.meaningful.update({k: st.sampled_from(v) for k, v in named.items()})
    # Dates and times in any zone (`since`, `until`), and event cursors (`after`).
    minutes = st.sampled_from([None, 0, 60, -300, 345, 840, -720]) | st.integers(-1439, 1439)
    zone = minutes.map(lambda m: None if m is None else timezone(timedelta(minutes=m)))
    instant = st.datetimes() | st.sampled_from([datetime.min, datetime.max])
    moment = st.dates().map(date.isoformat) | st.builds(
        lambda when, tz: when.replace(tzinfo=tz).isoformat(), instant, zone)
    cursor = st.builds("{}{}".format, st.sampled_from("pd"), st.integers(0, 10**18 - 1))
    world.meaningful.update({"since": moment, "until": moment, "after": cursor})
    world.inbound_token("ops")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[World]:
    """A real `keepflow serve` on a seeded home, on each store; after it stops, its log must
    hold no internal error and its exit code must be 0."""
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    home = tmp / "home"
    extra = {"KEEPFLOW_HOME": str(home), "KEEPFLOW_API_TOKEN": ACCESS_TOKEN}
    if request.param == "postgresql":
        # Imported at run time: mypy would follow tests/conftest.py into keepflow, which as
        # an installed package has no py.typed marker.
        conftest = importlib.import_module("tests.conftest")
        extra["KEEPFLOW_DATABASE_URL"] = conftest.new_pg_database(
            request.getfixturevalue("pg_admin_url"), request.getfixturevalue("pg_template"))
    env = _env(**extra)
    assert kf(env, "init").returncode == 0
    sink = Sink().start()
    (home / "connections.toml").write_text(
        f'[connections.api]\ntype = "http"\nbase_url = "{sink.url}"\n', encoding="utf-8")
    (home / "policy.toml").write_text('[approvals]\nrequire = ["api.post"]\n', encoding="utf-8")
    for name, source in (("ops", OPS), ("ops", OPS.replace("always fails", "fails")),
                         ("gate", GATE)):
        (tmp / f"{name}.js").write_text(source, encoding="utf-8")
        deployed = kf(env, "deploy", str(tmp / f"{name}.js"))
        assert deployed.returncode == 0, deployed.stderr
    log = tmp / "serve.log"
    server = Server(env, log)
    session = requests.Session()
    try:
        world = World(server.url, log, session)
        _seed(world)
        yield world
    finally:
        session.close()
        code = server.stop() if server.proc.poll() is None else server.proc.returncode
        sink.stop()
        text = log.read_text(errors="replace")
        assert INTERNAL.search(text) is None, text[-6000:]
        assert code == 0, text[-3000:]


def _sometimes_meaningful(world: World, values: Any, declared: list[str], route: str
                          ) -> st.SearchStrategy[Any]:
    """``values`` as generated, or with some of them (or of the ``declared`` parameters they
    leave out) set to values that mean something on ``route``: each on its own, or all of
    them naming one seeded object. Invalid input may not even be a dict: it stays as it is."""
    if not isinstance(values, dict):
        return st.just(values)
    last = route.rsplit("/", 1)[-1]
    meaning = {k: world.meaningful.get(f"{last}:{k}", world.meaningful.get(k))
               for k in dict.fromkeys([*values, *declared])}
    strategies = {k: s for k, s in meaning.items() if s is not None}
    if not strategies:
        return st.just(values)
    keys = set(strategies)
    fitting = [o for o in world.objects if keys <= set(o)]
    real = (st.sampled_from(fitting).map(lambda o: {k: o[k] for k in keys}) if fitting
            else st.fixed_dictionaries(strategies))
    mixed = st.fixed_dictionaries({k: st.just(values.get(k, _ABSENT)) | s
                                   for k, s in strategies.items()})
    return st.one_of(real, mixed, real, st.just({})).map(
        lambda chosen: {**values, **{k: v for k, v in chosen.items() if v is not _ABSENT}})


@pytest.fixture(scope="module")
def api_schema(world: World) -> BaseSchema:
    """The schema the real server publishes, with the hooks that aim generated path and query
    values at what means something some of the time."""
    schema = schemathesis.openapi.from_url(
        world.url + "/api/openapi.json", config=schemathesis.Config(), timeout=30,
        headers={"Authorization": f"Bearer {ACCESS_TOKEN}"})

    @schema.hook
    def flatmap_path_parameters(context: HookContext, path_parameters: Any
                                ) -> st.SearchStrategy[Any]:
        route = context.operation.path if context.operation else ""
        return _sometimes_meaningful(world, path_parameters, [], route)

    @schema.hook
    def flatmap_query(context: HookContext, query: Any) -> st.SearchStrategy[Any]:
        op = context.operation
        declared = [p.name for p in op.query] if op else []
        return _sometimes_meaningful(world, query, declared, op.path if op else "")

    return schema


def _operations(schema: BaseSchema) -> list[Operation]:
    """Every operation the schema publishes; one the loader cannot read fails the test."""
    results = list(schema.get_all_operations())
    assert not [r.err() for r in results if isinstance(r, Err)]
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    published = {(path, method.upper()) for path, methods in schema.raw_schema["paths"].items()
                 for method in methods}
    assert {(op.path, op.method.upper()) for op in operations} == published
    assert len(operations) >= 30, "fewer operations than docs/api.md lists"
    return operations


def _fuzz(operation: Operation, send: Callable[[AnyCase], None], max_examples: int) -> None:
    """``send`` generated cases of ``operation``: two valid ones for each invalid one."""
    valid = operation.as_strategy(GenerationMode.POSITIVE)
    strategy = st.one_of(valid, valid, operation.as_strategy(GenerationMode.NEGATIVE))
    ran = 0

    @settings(deadline=None, derandomize=True, database=None, max_examples=max_examples,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(case=strategy)
    def run(case: AnyCase) -> None:
        nonlocal ran
        ran += 1
        send(case)

    run()
    assert ran >= 1, f"no example of {operation.label} was generated"


def _budget(operation: Operation) -> int:
    parameters = len(operation.path_parameters) + len(operation.query) + bool(operation.body)
    return EXAMPLES + PER_PARAMETER * parameters


def _is_inbound(case: AnyCase) -> bool:
    return case.method.upper() == "POST" and INBOUND.match(case.operation.path) is not None


def _check(case: AnyCase, response: Response, world: World, sent: dict[str, str]) -> None:
    """No 5xx, JSON, an error in keepflow's shape, nothing internal in the log."""
    what = (f"{case.as_curl_command(headers=sent, base_url=world.url)}\n"
            f"-> {response.status_code} {response.content[:500]!r}")
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, what
    try:
        body = json.loads(response.content)
    except ValueError:
        pytest.fail(f"an answer that is not JSON: {what}")
    if response.status_code >= 400:
        error = body.get("error") if isinstance(body, dict) else None
        assert isinstance(error, dict), f"not keepflow's error shape: {what}"
        assert isinstance(error.get("message"), str), what
        assert error["message"].strip(), what
        assert error.get("code") in ERROR_CODES.get(response.status_code, set()), what
        if response.status_code == 422:
            assert isinstance(error.get("field"), str), what
            assert error["field"], what
    logged = world.internal_errors()
    assert logged is None, f"the server logged an internal error after {what}\n{logged}"


def test_no_request_with_the_access_token_is_a_server_error(
        api_schema: BaseSchema, world: World, subtests: pytest.Subtests) -> None:
    def send(case: AnyCase) -> None:
        sent = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
        if case.method.upper() == "POST":
            sent |= CSRF
        if _is_inbound(case):
            sent["Authorization"] = \
                f"Bearer {world.inbound_token(str(case.path_parameters['name']))}"
        response = case.call(base_url=world.url, session=world.session, headers=sent,
                             timeout=60)
        _check(case, response, world, sent)
        made = re.fullmatch(r"/api/workflows/[^/]+/inbound-token(/revoke)?",
                            case.formatted_path)
        if made and response.status_code == 200:  # the fuzz replaced the token itself
            answer = json.loads(response.content)
            if made.group(1):
                world.inbound.pop(answer["workflow"], None)
            else:
                world.inbound[answer["workflow"]] = answer["token"]

    for operation in _operations(api_schema):
        with subtests.test(msg=operation.label):
            _fuzz(operation, send, _budget(operation))


@pytest.mark.parametrize("credential", ["missing", "wrong"])
def test_without_the_access_token_every_request_is_unauthorized(
        api_schema: BaseSchema, world: World, subtests: pytest.Subtests, credential: str
        ) -> None:
    def send(case: AnyCase) -> None:
        sent = {} if credential == "missing" else {"Authorization": f"Bearer {WRONG_TOKEN}"}
        if case.method.upper() == "POST":
            sent |= CSRF
        response = case.call(base_url=world.url, session=world.session, headers=sent,
                             timeout=60)
        _check(case, response, world, sent)
        if not _is_inbound(case):  # an inbound event carries its workflow's token instead
            assert response.status_code == 401, (case.as_curl_command(headers=sent),
                                                 response.content[:300])

    for operation in _operations(api_schema):
        with subtests.test(msg=operation.label):
            _fuzz(operation, send, ANONYMOUS_EXAMPLES)
