/* keepflow-attack
{
  "attack": "prepare returns data holding a lone surrogate",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "the handler's return value at $.data.note",
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
        return { reservations: [{ topic: "items", ids: [e.messageId] }], data: { note: "\ud800" } }; },
      async mutate(ctx, prepared) {  },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
