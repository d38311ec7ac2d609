/* keepflow-attack
{
  "attack": "next publishes a title with a lone surrogate after an applied mutation",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "$.title",
      "lone UTF-16 surrogate"
    ]
  },
  "sent": 1,
  "ledger": [
    "applied"
  ]
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
      async prepare(ctx, state) { 
        const [e] = await ctx.peek("items", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "items", ids: [e.messageId] }], data: { id: e.messageId } }; },
      async mutate(ctx, prepared) { await ctx.api.post({ url: "/orders", json: { id: prepared.data.id } }); },
      async next(ctx, prepared, mutation) { await ctx.publish("items", { messageId: "b", title: "\ud800", payload: {} }); return null; },
    }),
  },
});
