/* keepflow-attack
{
  "attack": "a producer returns a state holding a lone surrogate",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "the handler's return value at $.cursor",
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
      await ctx.publish("items", { messageId: "a", title: "ok", payload: {} });
      return { cursor: "\udbff" };
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
