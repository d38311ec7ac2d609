/* keepflow-attack
{
  "attack": "the mutation is not awaited; the script returns and leaves a rejected promise",
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
    "status": "committed"
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
      async mutate(ctx, prepared) { ctx.api.post({ url: "/orders", json: { id: prepared.data.id } }); Promise.reject(new Error("x")); return "ignored"; },
      async next(ctx, prepared, mutation) { return { saw: mutation.status }; },
    }),
  },
});
