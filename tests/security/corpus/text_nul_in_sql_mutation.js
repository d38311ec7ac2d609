/* keepflow-attack
{
  "attack": "a NUL in a SQL insert value",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "ctx.db.insert() argument 1 at $.values.v",
      "NUL"
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
      async mutate(ctx, prepared) { await ctx.db.insert({ table: "rows", values: { k: "a", v: "a\u0000" }, key: { k: "a" } }); },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
