/* keepflow-attack
{
  "attack": "a Map that grows until the heap is exhausted (the engine then throws null)",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "sandbox_limit",
    "message": [
      "ran out of memory"
    ]
  },
  "policy": {
    "limits": {
      "sandbox_memory_bytes": 8388608
    },
    "timeouts": {
      "handler_cpu_seconds": 10
    }
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      const m = new Map();
      for (let i = 0; ; i++) m.set(i, [i]);
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
