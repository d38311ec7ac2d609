// TypeScript declarations of the keepflow workflow script API: the global `Keep`, the `ctx`
// each handler phase receives, events, PrepareResults, mutation results, and the tools of the
// built-in `http` and `sql` connections. The guide: docs/writing-workflows.md.
//
// This file declares globals (it is not a module). List it in the "files" of a jsconfig.json /
// tsconfig.json next to your scripts, with "lib": ["es2022"] and no "dom" (the sandbox has no
// browser APIs). Declare your connections by merging into `KeepflowConnections`:
//
//   interface KeepflowConnections {
//     api: keepflow.HttpConnection;
//     shop: keepflow.SqlConnection;
//   }

declare namespace keepflow {
  // ---------------------------------------------------------------- values

  /** A value the outside world (a tool, the store) hands to the script: JSON. Integers beyond
   * ±(2^53−1) arrive as decimal strings. Typed `any` so that results can be used directly. */
  type Json = any;

  /** What a script may hand to the host (publish arguments, tool params, PrepareResults,
   * states): null, booleans, finite numbers, strings, arrays, plain objects and Dates (sent as
   * ISO 8601 strings). `undefined` object properties are left out; `undefined` in an array,
   * NaN, Infinity, BigInt, functions, Maps, Sets, class instances, Promises and cycles fail the
   * run. */
  type HostValue =
    | null
    | boolean
    | number
    | string
    | Date
    | readonly HostValue[]
    | { readonly [key: string]: HostValue | undefined };

  /** A handler's state: any JSON value (at most `limits.state_bytes`). */
  type State = any;

  // ---------------------------------------------------------------- events

  /** An event as `ctx.peek` and `ctx.getByIds` return it. */
  interface Event<P = Json> {
    readonly messageId: string;
    readonly title: string;
    readonly payload: P;
    readonly topic: string;
    /** ISO 8601 time the event was stored. */
    readonly createdAt: string;
  }

  /** The second argument of `ctx.publish`; no other keys are allowed. */
  interface PublishEvent {
    /** 1–256 characters, unique per workflow and topic: a publish of an existing messageId is
     * a no-op. An integer is stored as its decimal string. Omitted: `sha256:` + the hash of
     * the payload's canonical JSON (the title is not part of it). */
    messageId?: string | number | null;
    /** Required: non-empty after trimming, at most 200 characters; names the external thing. */
    title: string;
    /** Any JSON value, at most `limits.payload_bytes` as JSON. */
    payload?: HostValue;
  }

  interface Published {
    /** The event's messageId, given or derived. */
    readonly messageId: string;
  }

  interface PeekOptions {
    /** 1 to `limits.peek_max` (100); default 10. */
    limit?: number;
  }

  // ---------------------------------------------------------------- ctx

  /** `ctx.log(...)`: a line in the run log at level info. */
  type Log = (...values: unknown[]) => void;

  /** Publish an event to a declared topic; written when the run commits. */
  type Publish = (topic: string, event: PublishEvent) => Promise<Published>;

  /** Pending, unreserved events of a subscribed topic, oldest first. */
  type Peek = <P = Json>(topic: string, options?: PeekOptions) => Promise<Event<P>[]>;

  /** Events of a subscribed topic by messageId (any status), in the order of `ids`; unknown
   * ids are left out. At most `limits.peek_max` ids, strings only. */
  type GetByIds = <P = Json>(topic: string, ids: readonly string[]) => Promise<Event<P>[]>;

  /** A tool call: exactly one object argument with its parameters. */
  type Tool<P = { readonly [param: string]: HostValue | undefined }, R = Json> =
    (params: P) => Promise<R>;

  /** Any connection: its tools by name (`ctx.<connection>.<tool>(params)`). */
  interface Connection {
    readonly [tool: string]: Tool;
  }

  /** Every connection, typed where `KeepflowConnections` declares it. */
  type Connections = KeepflowConnections & { readonly [connection: string]: Connection };

  /** ctx of a producer: read tools, publish, log. */
  interface ProducerCtxMethods {
    readonly log: Log;
    readonly publish: Publish;
  }

  /** ctx of prepare: read tools, peek, getByIds, log. */
  interface PrepareCtxMethods {
    readonly log: Log;
    readonly peek: Peek;
    readonly getByIds: GetByIds;
  }

  /** ctx of mutate: by-id read tools, getByIds, log, and at most one mutation, which never
   * returns (it is the last statement of mutate). */
  interface MutateCtxMethods {
    readonly log: Log;
    readonly getByIds: GetByIds;
  }

  /** ctx of next: publish and log only; no tools. */
  interface NextCtxMethods {
    readonly log: Log;
    readonly publish: Publish;
  }

  type ProducerCtx = ProducerCtxMethods & Connections;
  type PrepareCtx = PrepareCtxMethods & Connections;
  type MutateCtx = MutateCtxMethods & Connections;
  type NextCtx = NextCtxMethods;

  // ---------------------------------------------------------------- producers

  type IntervalUnit = "s" | "m" | "h" | "d";

  /** Every N units: a positive integer and s/m/h/d ("30s", "5m", "2h", "1d"), at least
   * `limits.min_interval_seconds` (30 s) and at most 366 days. */
  interface IntervalSchedule {
    interval: `${number}${IntervalUnit}`;
  }

  /** Five cron fields (minute hour day-of-month month day-of-week) in `tz` (an IANA zone;
   * default UTC). */
  interface CronSchedule {
    cron: string;
    tz?: string;
  }

  type Schedule = IntervalSchedule | CronSchedule;

  /** Called as `handler(ctx, state)`; `state` is undefined on the first run. Returns the new
   * state; `undefined` keeps the current one. */
  type ProducerHandler = (ctx: ProducerCtx, state: State) =>
    HostValue | undefined | void | Promise<HostValue | undefined | void>;

  interface ScheduledProducer {
    schedule: Schedule;
    handler: ProducerHandler;
  }

  /** A function (manual trigger only) or `{schedule, handler}`. */
  type Producer = ProducerHandler | ScheduledProducer;

  // ---------------------------------------------------------------- consumers

  interface Reservation {
    /** A topic this consumer subscribes to. */
    topic: string;
    /** messageIds of existing, pending events (numbers become strings). */
    ids: readonly (string | number)[];
  }

  /** What prepare returns; no other keys are allowed. */
  interface PrepareResult {
    /** `[]`: nothing to do (mutate is skipped, next gets {status: "none"}). */
    reservations: readonly Reservation[];
    /** Handed unchanged to mutate and next. */
    data?: HostValue;
    /** Shown to people reading the run. */
    ui?: HostValue;
  }

  /** The stored PrepareResult as mutate and next receive it. */
  interface Prepared<D = Json> {
    readonly reservations: readonly { readonly topic: string; readonly ids: readonly string[] }[];
    /** `null` when prepare left it out. */
    readonly data: D;
    readonly ui?: Json;
  }

  /** The mutation took effect; `result` is the tool's result (`{truncated: true, bytes}` when
   * it was larger than half of `limits.message_bytes`). */
  interface MutationApplied<R = Json> {
    readonly status: "applied";
    readonly result: R;
  }

  /** prepare reserved nothing, or mutate made no mutation call. */
  interface MutationNone {
    readonly status: "none";
  }

  /** A person skipped the run; its reserved events end skipped. */
  interface MutationSkipped {
    readonly status: "skipped";
  }

  type MutationResult<R = Json> = MutationApplied<R> | MutationNone | MutationSkipped;

  type MutationStatus = MutationResult["status"];

  interface ConsumerDefinition {
    /** Declared topics this consumer consumes (each topic has exactly one consumer). */
    subscribe: string | readonly string[];
    prepare(ctx: PrepareCtx, state: State): PrepareResult | Promise<PrepareResult>;
    mutate(ctx: MutateCtx, prepared: Prepared): unknown;
    /** Returns the consumer's new state; `undefined` keeps the current one. */
    next(ctx: NextCtx, prepared: Prepared, mutation: MutationResult):
      HostValue | undefined | void | Promise<HostValue | undefined | void>;
  }

  interface WorkflowDefinition {
    /** 1–64 characters of a-z, 0-9, ".", "_", "-", starting with a letter or digit. */
    name: string;
    /** Every topic the workflow uses; the values are not used: write `{}`. */
    topics: { readonly [topic: string]: object };
    /** Handler names are JavaScript identifiers, unique across producers and consumers. */
    producers?: { readonly [handler: string]: Producer };
    consumers?: { readonly [handler: string]: ConsumerDefinition };
  }

  interface KeepApi {
    /** Defines the workflow: `export default Keep.workflow({...})`, exactly once. */
    readonly workflow: (definition: WorkflowDefinition) => WorkflowDefinition;
    /** Marks a consumer definition. */
    readonly consumer: (definition: ConsumerDefinition) => ConsumerDefinition;
  }

  // ---------------------------------------------------------------- http connections

  type HttpQueryValue = string | number | boolean;

  interface HttpReadParams {
    /** Relative URLs are appended to the connection's base_url. */
    url: string;
    headers?: { readonly [name: string]: string };
    query?: { readonly [name: string]: HttpQueryValue | readonly HttpQueryValue[] };
    /** Seconds; can only shorten the host's per-call timeout. */
    timeout?: number;
  }

  interface HttpReconcile {
    /** Answers 2xx when the request with `{idempotencyKey}` took effect, 404 when it did not. */
    url: string;
    method?: "GET";
  }

  interface HttpWriteParams extends HttpReadParams {
    /** A JSON body (not with `body`). */
    json?: HostValue;
    /** A text body (not with `json`). */
    body?: string;
    /** How to verify an uncertain outcome; without it a person is asked. */
    reconcile?: HttpReconcile;
  }

  interface HttpResult {
    readonly status: number;
    /** Lower-case names; repeated headers joined with ", ". */
    readonly headers: { readonly [name: string]: string };
    /** The body, when it is JSON. */
    readonly json?: Json;
    /** The body, when it is not JSON (or was cut). */
    readonly text?: string;
    readonly truncated?: true;
  }

  interface HttpConnection {
    /** read */
    readonly get: Tool<HttpReadParams, HttpResult>;
    /** read */
    readonly head: Tool<HttpReadParams, HttpResult>;
    /** mutation */
    readonly post: Tool<HttpWriteParams, HttpResult>;
    /** mutation */
    readonly put: Tool<HttpWriteParams, HttpResult>;
    /** mutation */
    readonly patch: Tool<HttpWriteParams, HttpResult>;
    /** mutation */
    readonly delete: Tool<HttpWriteParams, HttpResult>;
  }

  // ---------------------------------------------------------------- sql connections

  type SqlRow = { readonly [column: string]: Json };
  type SqlParam = string | number | boolean | null;
  /** Exactly the primary key or a full unique key, non-null strings, integers or booleans. */
  type SqlKey = { readonly [column: string]: string | number | boolean };

  interface SqlQueryParams {
    /** One SELECT (or WITH … SELECT) with named `:params`. */
    sql: string;
    params?: { readonly [name: string]: SqlParam };
  }

  interface SqlQueryResult<R = SqlRow> {
    readonly rows: R[];
    readonly rowCount: number;
    /** More than the connection's max_rows rows. */
    readonly truncated?: true;
  }

  interface SqlGetParams {
    table: string;
    key: SqlKey;
  }

  interface SqlGetResult<R = SqlRow> {
    readonly row: R | null;
  }

  interface SqlWriteParams {
    table: string;
    key: SqlKey;
    values?: { readonly [column: string]: HostValue | undefined };
  }

  interface SqlDeleteParams {
    table: string;
    key: SqlKey;
  }

  interface SqlMutationResult<R = SqlRow> {
    readonly rowCount: number;
    readonly row: R | null;
    /** An insert found its identical row (an earlier attempt of this mutation). */
    readonly alreadyPresent?: true;
    readonly truncated?: true;
  }

  interface SqlConnection {
    /** read */
    readonly query: Tool<SqlQueryParams, SqlQueryResult>;
    /** by-id read */
    readonly get: Tool<SqlGetParams, SqlGetResult>;
    /** mutation */
    readonly insert: Tool<SqlWriteParams, SqlMutationResult>;
    /** mutation */
    readonly update: Tool<SqlWriteParams, SqlMutationResult>;
    /** mutation */
    readonly upsert: Tool<SqlWriteParams, SqlMutationResult>;
    /** mutation */
    readonly delete: Tool<SqlDeleteParams, SqlMutationResult>;
  }
}

/** The configured connections by name; merge your own into it. `http` exists by default. */
interface KeepflowConnections {
  http: keepflow.HttpConnection;
}

/** The run log: `console.log`/`info` log at info, `warn`, `error`, `debug` at their level. */
interface Console {
  log(...values: unknown[]): void;
  info(...values: unknown[]): void;
  warn(...values: unknown[]): void;
  error(...values: unknown[]): void;
  debug(...values: unknown[]): void;
}

declare var console: Console;

declare const Keep: keepflow.KeepApi;
