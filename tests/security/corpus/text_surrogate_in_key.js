/* keepflow-attack
{
  "attack": "a lone surrogate in an object key",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "(a key)",
      "lone UTF-16 surrogate"
    ]
  },
  "events": 0
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      await ctx.publish("items", { messageId: "a", title: "ok", payload: { ["k\ud83d"]: 1 } });
      return { ok: 1 };
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
