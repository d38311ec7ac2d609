/* keepflow-attack
{
  "attack": "mutation parameters hold a lone surrogate: nothing may be sent, and it is never 'indeterminate'",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "ctx.api.post() argument 1 at $.json.name",
      "lone UTF-16 surrogate"
    ]
  },
  "sent": 0,
  "ledger": []
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
      async mutate(ctx, prepared) { await ctx.api.post({ url: "/orders", json: { name: "x\ud800" } }); },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
