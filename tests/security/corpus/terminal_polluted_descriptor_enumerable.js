/* keepflow-attack
{
  "attack": "Object.prototype.enumerable polluted before the terminal mutation, with code in a catch after it",
  "deploy": "unchecked",
  "trigger": [
    "seed"
  ],
  "sent": 1,
  "ledger": [
    "applied"
  ],
  "run": {
    "handler": "work",
    "status": "committed",
    "no_logs": [
      "after the mutation"
    ]
  }
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
      async mutate(ctx, prepared) { 
        Object.prototype.enumerable = undefined;
        try {
          await ctx.api.post({ url: "/orders", json: { id: prepared.data.id } });
        } catch (e) {
          ctx.log("after the mutation (caught): " + e);
        }
        ctx.log("after the mutation"); },
      async next(ctx, prepared, mutation) { return { saw: mutation.status }; },
    }),
  },
});
