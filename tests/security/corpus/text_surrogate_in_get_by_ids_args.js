/* keepflow-attack
{
  "attack": "a lone surrogate among the ids of ctx.getByIds",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "ctx.getByIds() argument 2 at $[0]",
      "lone UTF-16 surrogate"
    ]
  },
  "sent": 0
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      await ctx.publish("items", { messageId: "a", title: "Item a", payload: { id: "a" } });
      return { ok: 1 };
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx, state) { await ctx.getByIds("items", ["\ud800"]); return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {  },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
