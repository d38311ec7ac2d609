// keepflow prelude: evaluated as a global script in every fresh context, before the user's
// module (SPEC §2). It defines `Keep` and `console`, and evaluates to a private dispatch
// function that only the Python driver holds (it is never stored on the global object).
//
// Everything the bridge uses is captured here, before any user code runs, and its bookkeeping
// lives in null-prototype objects — property descriptors included: prototype pollution
// (`Object.prototype.get = …`) or reassigned globals cannot forge a host reply, steal one, make
// a host call throw, or hide one (SPEC §5.2: a terminal call never returns).
// Code cannot be built from strings: `eval`, `Function` and the constructors of async and
// generator functions throw (docs/security.md#the-sandbox).
// Protocol with the driver: every result is `header + "\n" + payload`, both JSON texts.
(function () {
  "use strict";

  // ------------------------------------------------------------------ captured primordials
  const G = globalThis;
  const ObjectProto = Object.prototype;
  const defineProperty = Object.defineProperty;
  const freeze = Object.freeze;
  const getPrototypeOf = Object.getPrototypeOf;
  const objectKeys = Object.keys;
  const objectCreate = Object.create;
  const getOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
  const apply = Reflect.apply;
  const isArray = Array.isArray;
  const jsonParse = JSON.parse;
  const jsonStringify = JSON.stringify;
  const PromiseCtor = Promise;
  const promiseThen = Promise.prototype.then;
  const ProxyCtor = Proxy;
  const TypeErrorCtor = TypeError;
  const WeakSetCtor = WeakSet;
  const weakSetAdd = WeakSet.prototype.add;
  const weakSetHas = WeakSet.prototype.has;
  const MapCtor = Map;
  const mapSet = Map.prototype.set;
  const mapDelete = Map.prototype.delete;
  const mapForEach = Map.prototype.forEach;
  const mapSize = getOwnPropertyDescriptor(Map.prototype, "size").get;
  const setSize = getOwnPropertyDescriptor(Set.prototype, "size").get;
  const dateNow = Date.now;
  const dateGetTime = Date.prototype.getTime;
  const dateToISOString = Date.prototype.toISOString;
  const StringCtor = String;
  const stringSlice = String.prototype.slice;
  const stringIndexOf = String.prototype.indexOf;
  const stringCharCodeAt = String.prototype.charCodeAt;
  const regexpExec = RegExp.prototype.exec;
  const isPrototypeOf = Object.prototype.isPrototypeOf;
  const ErrorProto = Error.prototype;
  const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
  const MAX_DEPTH = 64;

  // A property descriptor that inherits nothing: a polluted Object.prototype (`get`, `set`,
  // `writable`, …) would otherwise turn defineProperty into a throw or an accessor.
  function desc(value, writable, enumerable, configurable) {
    const d = objectCreate(null);
    d.value = value;
    d.writable = writable;
    d.enumerable = enumerable;
    d.configurable = configurable;
    return d;
  }

  function lock(target, key, value) {
    defineProperty(target, key, desc(value, false, false, false));
  }

  // CallSite.getFunction() would hand out every function on the stack, including this
  // bridge: replace the accessor by an inert, locked data property (the engine then never
  // builds CallSite objects and `err.stack` stays a string).
  lock(G.Error, "prepareStackTrace", undefined);

  // No code from strings (eval, new Function, (async () => {}).constructor("…")): such code
  // escapes every deploy-time check. Each constructor is replaced by one that throws, with the
  // same `prototype`, so `instanceof Function` still works.
  const NO_CODE_FROM_STRINGS = " is not available in keepflow scripts: code cannot be built " +
    "from strings; write the code in the script (docs/security.md#the-sandbox)";
  function blocker(name, proto) {
    const fn = function () { throw new TypeErrorCtor(name + NO_CODE_FROM_STRINGS); };
    if (proto !== null) lock(fn, "prototype", proto);
    return freeze(fn);
  }
  const FunctionProto = Function.prototype;
  const functionBlocker = blocker("Function", FunctionProto);
  lock(FunctionProto, "constructor", functionBlocker);
  defineProperty(G, "Function", desc(functionBlocker, false, false, false));
  defineProperty(G, "eval", desc(blocker("eval", null), false, false, false));
  const kinds = [
    ["AsyncFunction", getPrototypeOf(async function () { /* probe */ })],
    ["GeneratorFunction", getPrototypeOf(function* () { /* probe */ })],
    ["AsyncGeneratorFunction", getPrototypeOf(async function* () { /* probe */ })],
  ];
  for (let i = 0; i < kinds.length; i++) {
    lock(kinds[i][1], "constructor", blocker(kinds[i][0], kinds[i][1]));
  }

  // ------------------------------------------------------------------ private state
  const S = objectCreate(null);
  S.token = null; // secret the driver passes with every call
  S.userLines = 0; // stack positions beyond this line are the prelude's
  S.registered = 0;
  S.def = undefined;
  S.loading = true;
  S.module = "pending"; // pending | ok | threw
  S.moduleError = null;
  S.started = false;
  S.state = "pending"; // pending | returned | threw | fatal | terminal
  S.value = null; // JSON text of the returned value
  S.undefinedResult = false;
  S.error = null; // JSON text describing a throw or a fatal condition
  S.calls = 0;
  S.queue = "";
  S.queued = 0;
  S.pending = objectCreate(null); // seq -> resolve function
  S.logs = "";
  S.logCount = 0;
  S.maxLogs = 1000;
  S.maxLogChars = 4096;
  S.maxHostCalls = 1000;
  S.maxMessage = 8 * 1024 * 1024;
  S.rejections = new MapCtor(); // promise -> reason (filled by the host's rejection tracker)
  const consumerSet = new WeakSetCtor();
  const serialErrors = new WeakSetCtor();

  function append(array, value) {
    defineProperty(array, array.length, desc(value, true, true, true));
  }

  // Once a terminal mutation is queued the invocation is over (SPEC §5.2): whatever the script
  // does next — log, throw, return, reject — is dropped. Host calls made after it are still
  // queued, so the host can refuse the run (a mutation must be the last thing mutate does).
  function over() {
    return S.state === "threw" || S.state === "fatal" || S.state === "terminal";
  }

  function kind(v) {
    if (v === null) return "null";
    if (isArray(v)) return "array";
    return typeof v;
  }

  // ------------------------------------------------------------------ strict JSON serialiser
  // Only null, booleans, finite numbers, strings, arrays, plain objects and Dates cross to the
  // host. Errors carry the JSON path of the offending value (`$.items[2].when`).
  function serialError(kind_, path, what) {
    const e = objectCreate(null);
    e.kind = kind_; // "invalid" | "size"
    e.path = path;
    e.what = what;
    apply(weakSetAdd, serialErrors, [e]);
    return e;
  }

  function keyPath(path, key) {
    if (apply(regexpExec, IDENTIFIER, [key]) !== null) return path + "." + key;
    return path + "[" + jsonStringify(key) + "]";
  }

  function instanceKind(v, proto) {
    try { apply(mapSize, v, []); return "a Map"; } catch (e) { /* not a Map */ }
    try { apply(setSize, v, []); return "a Set"; } catch (e) { /* not a Set */ }
    try {
      const ctor = proto.constructor;
      if (typeof ctor === "function" && typeof ctor.name === "string" && ctor.name !== "") {
        const hint = ctor === PromiseCtor ? " (missing await?)" : "";
        return "an instance of " + ctor.name + hint;
      }
    } catch (e) { /* fall through */ }
    return "an object that is not a plain object";
  }

  // The writer keeps the trail of keys from the root to the value being written; a path
  // such as `$.items[2].when` is built from it only when a value is refused.
  function Writer(limit) {
    const w = objectCreate(null);
    w.out = "";
    w.limit = limit;
    w.trail = objectCreate(null);
    w.trail.n = 0;
    return w;
  }

  function pathOf(w) {
    let path = "$";
    const trail = w.trail;
    for (let i = 0; i < trail.n; i++) {
      const key = trail[i];
      path = typeof key === "number" ? path + "[" + key + "]" : keyPath(path, key);
    }
    return path;
  }

  function refuse(w, kind_, what) {
    return serialError(kind_, pathOf(w), what);
  }

  function put(w, text) {
    w.out += text;
    if (w.out.length > w.limit) {
      throw refuse(w, "size", "makes the value larger than " + w.limit + " characters");
    }
  }

  function writeValue(w, v, depth, ancestors) {
    switch (typeof v) {
      case "string": put(w, jsonStringify(v)); return;
      case "boolean": put(w, v ? "true" : "false"); return;
      case "number":
        if (v !== v) throw refuse(w, "invalid", "is NaN");
        if (v === Infinity || v === -Infinity) throw refuse(w, "invalid", "is " + v);
        put(w, "" + v);
        return;
      case "bigint": throw refuse(w, "invalid", "is a BigInt");
      case "symbol": throw refuse(w, "invalid", "is a Symbol");
      case "function": throw refuse(w, "invalid", "is a function");
      case "undefined": throw refuse(w, "invalid", "is undefined");
      default: break;
    }
    if (v === null) { put(w, "null"); return; }
    if (depth > MAX_DEPTH) {
      throw refuse(w, "invalid", "is nested deeper than " + MAX_DEPTH + " levels");
    }
    for (let i = 0; i < ancestors.n; i++) {
      if (ancestors[i] === v) throw refuse(w, "invalid", "is a circular reference");
    }
    const array = isArray(v);
    const proto = array ? null : getPrototypeOf(v);
    if (!array && proto !== ObjectProto && proto !== null) {
      // Only a Date may have another prototype (checked by its internal slot, not its looks).
      let isDate = false;
      try { apply(dateGetTime, v, []); isDate = true; } catch (e) { /* not a Date */ }
      if (!isDate) throw refuse(w, "invalid", "is " + instanceKind(v, proto));
      let iso;
      try { iso = apply(dateToISOString, v, []); } catch (e) {
        throw refuse(w, "invalid", "is an invalid Date");
      }
      put(w, jsonStringify(iso));
      return;
    }
    ancestors[ancestors.n] = v;
    ancestors.n++;
    const trail = w.trail;
    const at = trail.n;
    if (array) {
      const n = v.length;
      put(w, "[");
      trail.n = at + 1;
      for (let i = 0; i < n; i++) {
        trail[at] = i;
        const item = v[i];
        if (item === undefined) {
          throw refuse(w, "invalid", "is undefined (not allowed inside an array)");
        }
        if (i > 0) put(w, ",");
        writeValue(w, item, depth + 1, ancestors);
      }
      trail.n = at;
      put(w, "]");
    } else {
      const keys = objectKeys(v);
      const n = keys.length;
      let first = true;
      put(w, "{");
      trail.n = at + 1;
      for (let i = 0; i < n; i++) {
        const k = keys[i];
        trail[at] = k;
        const item = v[k];
        if (item === undefined) continue; // omitted, as JSON does
        put(w, (first ? "" : ",") + jsonStringify(k) + ":");
        first = false;
        writeValue(w, item, depth + 1, ancestors);
      }
      trail.n = at;
      put(w, "}");
    }
    ancestors.n--;
  }

  // Returns the JSON text of `v`, or throws a serial error (see isSerialError).
  function serialize(v, limit) {
    const w = Writer(limit);
    const ancestors = objectCreate(null);
    ancestors.n = 0;
    writeValue(w, v, 0, ancestors);
    return w.out;
  }

  function isSerialError(e) {
    return e !== null && typeof e === "object" && apply(weakSetHas, serialErrors, [e]);
  }

  // ------------------------------------------------------------------ describing throws
  function safeString(v) {
    try { return StringCtor(v); } catch (e) { return "[" + typeof v + "]"; }
  }

  function truncate(text, max) {
    if (text.length <= max) return text;
    // Never cut a surrogate pair in half: the host would receive a lone surrogate.
    const last = apply(stringCharCodeAt, text, [max - 1]);
    const end = last >= 0xd800 && last <= 0xdbff ? max - 1 : max;
    return apply(stringSlice, text, [0, end]) + "… [truncated, " + text.length + " chars]";
  }

  function describeThrown(e) {
    const d = objectCreate(null);
    d.name = "Error";
    d.message = "";
    d.stack = "";
    try {
      if (e !== null && (typeof e === "object" || typeof e === "function")) {
        const name = e.name;
        const message = e.message;
        const stack = e.stack;
        d.name = typeof name === "string" ? name : "Error";
        d.message = typeof message === "string" ? message : safeString(e);
        d.stack = typeof stack === "string" ? stack : "";
      } else {
        d.name = typeof e;
        d.message = safeString(e);
      }
    } catch (inner) {
      d.message = "[the thrown value could not be described]";
    }
    return '{"name":' + jsonStringify(truncate(d.name, 200)) +
      ',"message":' + jsonStringify(truncate(d.message, 8192)) +
      ',"stack":' + jsonStringify(truncate(d.stack, 16384)) + "}";
  }

  function fatal(kind_, message) {
    if (over()) return;
    S.state = "fatal";
    S.error = '{"kind":' + jsonStringify(kind_) + ',"message":' + jsonStringify(message) + "}";
  }

  function serialMessage(prefix, e) {
    const where = e.path === "$" ? "" : " at " + e.path;
    if (e.kind === "size") return prefix + where + " " + e.what;
    return prefix + where + " " + e.what +
      "; only null, booleans, finite numbers, strings, arrays, plain objects and Dates can " +
      "cross to the host";
  }

  function threw(e) {
    if (over()) return;
    S.state = "threw";
    S.error = describeThrown(e);
  }

  // ------------------------------------------------------------------ logs
  // The stack as the script's author should see it: without the prelude's frames.
  function userStack(stack) {
    let out = "";
    let natives = ""; // native frames are kept only if a frame of the script follows
    let start = 0;
    while (start < stack.length) {
      let end = apply(stringIndexOf, stack, ["\n", start]);
      if (end < 0) end = stack.length;
      const line = apply(stringSlice, stack, [start, end]);
      start = end + 1;
      if (line === "") continue;
      const at = apply(stringIndexOf, line, ["<input>:"]);
      if (at < 0) {
        natives += "\n" + line;
        continue;
      }
      const from = at + 8;
      const colon = apply(stringIndexOf, line, [":", from]);
      if (+apply(stringSlice, line, [from, colon]) > S.userLines) continue;
      out += (out === "" ? apply(stringSlice, natives, [1]) : natives);
      out += (out === "" ? "" : "\n") + line;
      natives = "";
    }
    return out;
  }

  function formatArg(v) {
    if (typeof v === "string") return v;
    try {
      if (v !== null && typeof v === "object" && apply(isPrototypeOf, ErrorProto, [v])) {
        const stack = v.stack;
        const frames = typeof stack === "string" ? userStack(stack) : "";
        return safeString(v) + (frames !== "" ? "\n" + frames : "");
      }
      if (typeof v === "bigint") return safeString(v) + "n";
      const text = jsonStringify(v);
      return typeof text === "string" ? text : safeString(v);
    } catch (e) {
      return safeString(v);
    }
  }

  function log(level, args) {
    if (over()) return;
    if (S.logCount > S.maxLogs) return;
    let message;
    if (S.logCount === S.maxLogs) {
      level = "warn";
      message = "log limit reached (" + S.maxLogs + " entries); further entries are dropped";
    } else {
      message = "";
      const n = args.length;
      for (let i = 0; i < n; i++) {
        message += (i > 0 ? " " : "") + formatArg(args[i]);
        if (message.length > S.maxLogChars) break;
      }
      message = truncate(message, S.maxLogChars);
    }
    S.logCount++;
    S.logs += (S.logs === "" ? "" : ",") + '{"level":"' + level + '","message":' +
      jsonStringify(message) + ',"at":' + apply(dateNow, undefined, []) / 1000 + "}";
  }

  function logFunction(level) {
    return freeze(function () { log(level, arguments); });
  }

  // ------------------------------------------------------------------ host calls
  function never() {
    return ownPromise(new PromiseCtor(function () { /* never settles */ }));
  }

  // Own `constructor`/`then` make `await` take the engine's direct path, so a script that
  // patches Promise.prototype cannot make a call "return" before the host answered it.
  function ownPromise(p) {
    defineProperty(p, "constructor", desc(PromiseCtor, false, false, false));
    defineProperty(p, "then", desc(promiseThen, false, false, false));
    return freeze(p);
  }

  function hostCall(target, connection, tool, display, args, terminal) {
    if (S.state === "threw" || S.state === "fatal") return never();
    if (S.calls >= S.maxHostCalls) {
      fatal("host_calls", "more than " + S.maxHostCalls + " host calls in one invocation");
      return never();
    }
    let n = args.length;
    while (n > 0 && args[n - 1] === undefined) n--; // trailing undefined = not passed
    let text = "[";
    for (let i = 0; i < n; i++) {
      const arg = args[i];
      let part;
      try {
        part = arg === undefined ? "null" : serialize(arg, S.maxMessage);
      } catch (e) {
        if (!isSerialError(e)) throw e;
        fatal(e.kind === "size" ? "size" : "invalid_args",
          serialMessage(display + "() argument " + (i + 1), e));
        return never();
      }
      text += (i > 0 ? "," : "") + part;
    }
    text += "]";
    // One turn's calls cross in one message: together they obey the same size limit.
    if (S.queue.length + text.length > S.maxMessage) {
      fatal("size", display + "(): the calls made in one turn (before awaiting) are larger " +
        "than " + S.maxMessage + " characters of JSON together; await each call, or send " +
        "less data");
      return never();
    }
    S.calls++;
    const seq = S.calls;
    let resolveFn;
    const p = new PromiseCtor(function (resolve) { resolveFn = resolve; });
    S.pending[seq] = resolveFn;
    let entry = '{"seq":' + seq + ',"target":"' + target + '"';
    if (connection !== null) {
      entry += ',"connection":' + jsonStringify(connection) + ',"tool":' + jsonStringify(tool);
    }
    entry += ',"args":' + text + "}";
    S.queue += (S.queued > 0 ? "," : "") + entry;
    S.queued++;
    if (terminal) {
      S.state = "terminal";
      return never();
    }
    return ownPromise(p);
  }

  function stub(target, connection, tool, display, terminal) {
    return freeze(function () {
      return hostCall(target, connection, tool, display, arguments, terminal);
    });
  }

  function listNames(names) {
    let out = "";
    const n = names.length;
    for (let i = 0; i < n; i++) out += (i > 0 ? ", " : "") + names[i];
    return out === "" ? "(none)" : out;
  }

  // A Proxy names the configured connections/tools when a script reaches for an unknown one.
  function guard(target, what, names) {
    const handler = objectCreate(null);
    handler.get = function (t, key) {
      if (typeof key !== "string" || key in t) return t[key];
      if (key === "then" || key === "toJSON") return undefined;
      throw new TypeErrorCtor(what + "." + key + " is not available; configured: " +
        listNames(names));
    };
    return new ProxyCtor(freeze(target), handler);
  }

  function has(object, key) {
    return getOwnPropertyDescriptor(object, key) !== undefined;
  }

  // connections: name -> [tool, ...]; terminal: name -> [mutating tool, ...] (SPEC §5.2).
  function makeCtx(connections, terminal) {
    const ctx = {};
    defineProperty(ctx, "publish", desc(stub("publish", null, null, "ctx.publish", false),
      false, true, false));
    defineProperty(ctx, "peek", desc(stub("peek", null, null, "ctx.peek", false),
      false, true, false));
    defineProperty(ctx, "getByIds", desc(stub("getByIds", null, null, "ctx.getByIds", false),
      false, true, false));
    defineProperty(ctx, "log", desc(logFunction("info"), false, true, false));
    const names = objectKeys(connections);
    for (let i = 0; i < names.length; i++) {
      const name = names[i];
      if (has(ctx, name)) continue;
      const tools = connections[name];
      const mutating = has(terminal, name) ? terminal[name] : [];
      const conn = {};
      for (let j = 0; j < tools.length; j++) {
        const tool = tools[j];
        let isTerminal = false;
        for (let k = 0; k < mutating.length; k++) if (mutating[k] === tool) isTerminal = true;
        defineProperty(conn, tool, desc(
          stub("tool", name, tool, "ctx." + name + "." + tool, isTerminal), false, true, false));
      }
      defineProperty(ctx, name, desc(guard(conn, "ctx." + name, tools), false, true, false));
    }
    return guard(ctx, "ctx", names);
  }

  // ------------------------------------------------------------------ Keep and console
  const Keep = freeze({
    workflow: function workflow(def) {
      if (S.loading) {
        S.registered++;
        if (S.registered === 1) S.def = def;
      }
      return def;
    },
    consumer: function consumer(def) {
      if (def !== null && (typeof def === "object" || typeof def === "function")) {
        apply(weakSetAdd, consumerSet, [def]);
      }
      return def;
    },
  });
  freeze(Keep.workflow);
  freeze(Keep.consumer);
  defineProperty(G, "Keep", desc(Keep, false, false, false));
  const consoleObject = freeze({
    log: logFunction("info"), info: logFunction("info"), warn: logFunction("warn"),
    error: logFunction("error"), debug: logFunction("debug"),
  });
  defineProperty(G, "console", desc(consoleObject, false, false, false));

  // ------------------------------------------------------------------ driver operations
  function watchModule(promise) {
    S.loading = false;
    apply(promiseThen, promise, [
      function () { S.module = "ok"; },
      function (e) { S.module = "threw"; S.moduleError = describeThrown(e); },
    ]);
  }

  function definitionProblem() {
    if (S.module === "threw") return null;
    if (S.registered === 0) return "the script never calls Keep.workflow(...)";
    if (S.registered > 1) {
      return "the script calls Keep.workflow(...) " + S.registered + " times; exactly once is allowed";
    }
    return null;
  }

  function resolveHandler(path) {
    let parent = undefined;
    let node = S.def;
    let where = "";
    for (let i = 0; i < path.length; i++) where += (i > 0 ? "." : "") + path[i];
    for (let i = 0; i < path.length; i++) {
      const key = path[i];
      if (node === null || (typeof node !== "object" && typeof node !== "function")) {
        return "the workflow definition has no handler " + where;
      }
      parent = node;
      node = node[key];
    }
    if (typeof node !== "function" && node !== null && typeof node === "object") {
      const handler = node.handler; // a scheduled producer: {schedule, handler}
      if (typeof handler === "function") { parent = node; node = handler; }
    }
    if (typeof node !== "function") return "the workflow definition has no handler " + where;
    const found = objectCreate(null);
    found.fn = node;
    found.self = parent;
    return found;
  }

  function invoke(specText, argsText) {
    if (S.started) return "ok";
    S.started = true;
    const spec = jsonParse(specText);
    S.maxHostCalls = spec.maxHostCalls;
    S.maxMessage = spec.maxMessage;
    S.maxLogs = spec.maxLogs;
    S.maxLogChars = spec.maxLogChars;
    if (S.module === "threw") {
      S.state = "threw";
      S.error = S.moduleError;
      return "ok";
    }
    if (S.module === "pending") {
      fatal("never_settled", "the script's top level awaited a promise that can never settle");
      return "ok";
    }
    const problem = definitionProblem();
    if (problem !== null) { fatal("definition", problem); return "ok"; }
    let found;
    try {
      found = resolveHandler(spec.handler); // reads the definition: getters/proxies may throw
    } catch (e) {
      threw(e);
      return "ok";
    }
    if (typeof found === "string") { fatal("definition", found); return "ok"; }
    const args = jsonParse(argsText);
    const undefinedArgs = spec.undefinedArgs;
    for (let i = 0; i < undefinedArgs.length; i++) {
      defineProperty(args, undefinedArgs[i], desc(undefined, true, true, true));
    }
    const callArgs = objectCreate(null);
    callArgs.length = args.length + 1;
    callArgs[0] = makeCtx(spec.connections, spec.terminal);
    for (let i = 0; i < args.length; i++) callArgs[i + 1] = args[i];
    let result;
    try {
      result = apply(found.fn, found.self, callArgs);
    } catch (e) {
      threw(e);
      return "ok";
    }
    const wrapped = new PromiseCtor(function (resolve) { resolve(result); });
    apply(promiseThen, wrapped, [onReturned, onRejected]);
    return "ok";
  }

  function onReturned(v) {
    try {
      if (S.state !== "pending") return; // threw, fatal, or over after a terminal call
      if (v === undefined) {
        S.undefinedResult = true;
        S.value = "null";
      } else {
        S.value = serialize(v, S.maxMessage);
      }
      S.state = "returned";
    } catch (e) {
      try {
        if (isSerialError(e)) {
          fatal(e.kind === "size" ? "size" : "invalid_result",
            serialMessage("the handler's return value", e));
        } else {
          threw(e);
        }
      } catch (inner) {
        outOfMemory();
      }
    }
  }

  // Preallocated: recording a failure must work even when the heap is exhausted.
  const OUT_OF_MEMORY = '{"name":"InternalError","message":"out of memory","stack":""}';

  function outOfMemory() {
    if (over()) return;
    S.state = "threw";
    S.error = OUT_OF_MEMORY;
  }

  function onRejected(e) {
    try { threw(e); } catch (inner) { outOfMemory(); }
  }

  function settle(repliesText) {
    const replies = jsonParse(repliesText);
    const n = replies.length;
    for (let i = 0; i < n; i++) {
      const seq = replies[i][0];
      const resolve = S.pending[seq];
      if (resolve === undefined) continue;
      delete S.pending[seq];
      resolve(replies[i][1]);
    }
  }

  function onRejection(promise, reason, handled) {
    if (handled) apply(mapDelete, S.rejections, [promise]);
    else apply(mapSet, S.rejections, [promise, reason]);
  }

  function unhandledText() {
    if (S.state !== "returned" || apply(mapSize, S.rejections, []) === 0) return "null";
    let first = null;
    let count = 0;
    apply(mapForEach, S.rejections, [function (reason) {
      count++;
      if (first === null) first = reason;
    }]);
    return '{"count":' + count + ',"reason":' + describeThrown(first) + "}";
  }

  function poll() {
    const header = '{"state":"' + S.state + '","calls":' + S.queued +
      ',"error":' + (S.error === null ? "null" : S.error) +
      ',"unhandled":' + (S.queued === 0 ? unhandledText() : "null") + "}";
    let payload = '{"calls":[' + S.queue + '],"logs":[' + S.logs + "]";
    if (S.state === "returned" && S.queued === 0) {
      payload += ',"value":' + S.value + ',"undefined":' + (S.undefinedResult ? "true" : "false");
    }
    payload += "}";
    S.queue = "";
    S.queued = 0;
    S.logs = "";
    return header + "\n" + payload;
  }

  // ------------------------------------------------------------------ manifest (describe)
  function jsonSafe(v, where, problems) {
    try {
      return jsonParse(serialize(v, S.maxMessage));
    } catch (e) {
      if (!isSerialError(e)) throw e;
      append(problems, serialMessage(where, e));
      return null;
    }
  }

  function isPlainObject(v) {
    if (v === null || typeof v !== "object" || isArray(v)) return false;
    const proto = getPrototypeOf(v);
    return proto === ObjectProto || proto === null;
  }

  function describeProducer(p, name, problems) {
    const d = objectCreate(null);
    d.form = "invalid";
    d.schedule = null;
    d.problem = null;
    if (typeof p === "function") {
      d.form = "function";
    } else if (p !== null && typeof p === "object" && typeof p.handler === "function" &&
               p.schedule !== undefined) {
      d.form = "scheduled";
      d.schedule = jsonSafe(p.schedule, "producers." + name + ".schedule", problems);
    } else {
      d.problem = "a producer must be a function or {schedule, handler}";
    }
    return d;
  }

  function describeConsumer(c, name, problems) {
    const d = objectCreate(null);
    const phases = objectCreate(null);
    d.viaConsumer = false;
    d.subscribe = null;
    d.subscribeType = "undefined";
    d.phases = phases;
    if (c === null || typeof c !== "object") {
      append(problems, "consumers." + name + " is not an object");
      phases.prepare = "undefined"; phases.mutate = "undefined"; phases.next = "undefined";
      return d;
    }
    d.viaConsumer = apply(weakSetHas, consumerSet, [c]);
    const sub = c.subscribe;
    d.subscribeType = kind(sub);
    if (typeof sub === "string") {
      const list = [];
      append(list, sub);
      d.subscribe = list;
    } else if (isArray(sub)) {
      d.subscribe = jsonSafe(sub, "consumers." + name + ".subscribe", problems);
    }
    phases.prepare = typeof c.prepare;
    phases.mutate = typeof c.mutate;
    phases.next = typeof c.next;
    return d;
  }

  function describeGroup(group, label, describeOne, problems) {
    const out = objectCreate(null);
    if (group === undefined) return out;
    if (!isPlainObject(group)) {
      append(problems, label + " is not an object");
      return out;
    }
    const names = objectKeys(group);
    for (let i = 0; i < names.length; i++) {
      out[names[i]] = describeOne(group[names[i]], names[i], problems);
    }
    return out;
  }

  function manifest() {
    S.maxMessage = 8 * 1024 * 1024;
    if (S.module === "threw") {
      S.state = "threw";
      S.error = S.moduleError;
      return poll();
    }
    if (S.module === "pending") {
      fatal("never_settled", "the script's top level awaited a promise that can never settle");
      return poll();
    }
    const problems = [];
    const m = objectCreate(null);
    const def = S.def;
    const isObj = def !== null && typeof def === "object";
    m.registered = S.registered;
    if (S.registered === 0) append(problems, "the script never calls Keep.workflow(...)");
    if (S.registered > 0 && !isObj) append(problems, "Keep.workflow(...) must be given an object");
    const name = isObj ? def.name : undefined;
    m.name = typeof name === "string" ? name : null;
    m.nameType = kind(name);
    const topics = isObj ? def.topics : undefined;
    m.topicsType = kind(topics);
    m.topics = null;
    if (isPlainObject(topics)) {
      const t = objectCreate(null);
      const keys = objectKeys(topics);
      for (let i = 0; i < keys.length; i++) {
        t[keys[i]] = jsonSafe(topics[keys[i]], "topics." + keys[i], problems);
      }
      m.topics = t;
    } else if (topics !== undefined) {
      append(problems, "topics is not an object");
    }
    m.producers = describeGroup(isObj ? def.producers : undefined, "producers",
      describeProducer, problems);
    m.consumers = describeGroup(isObj ? def.consumers : undefined, "consumers",
      describeConsumer, problems);
    m.problems = problems;
    S.state = "returned";
    S.value = serialize(m, 64 * 1024 * 1024);
    return poll();
  }

  // ------------------------------------------------------------------ the dispatch function
  // Long concatenations are rope strings, which the binding cannot hand to Python: a slice
  // is always a flat copy.
  function flat(text) { return apply(stringSlice, text, [0]); }

  return function dispatch(token, op, a, b) {
    if (S.token === null && op === "init") { S.token = token; S.userLines = +a; return "ok"; }
    if (token !== S.token || S.token === null) return "denied";
    switch (op) {
      case "watch": watchModule(a); return "ok";
      case "invoke": return invoke(a, b);
      case "settle": settle(a); return "ok";
      case "poll": return flat(poll());
      case "manifest": return flat(manifest());
      case "recorder": return onRejection;
      default: return "denied";
    }
  };
})();
