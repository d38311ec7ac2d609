/* keepflow-attack
{
  "attack": "a NUL character in a title (PostgreSQL refuses it)",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "NUL character (U+0000)"
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
      await ctx.publish("items", { messageId: "a", title: "a\u0000b", payload: {} });
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
