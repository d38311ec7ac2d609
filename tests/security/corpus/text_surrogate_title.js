/* keepflow-attack
{
  "attack": "a lone surrogate in an event title",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "ctx.publish() argument 2 at $.title",
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
      await ctx.publish("items", { messageId: "a", title: "bad \ud800 title", payload: {} });
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
