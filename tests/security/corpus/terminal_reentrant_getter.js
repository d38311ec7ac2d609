/* keepflow-attack
{
  "attack": "a getter on the mutation params makes a second mutation while being serialised",
  "deploy": "unchecked",
  "trigger": [
    "seed"
  ],
  "sent": 0,
  "ledger": [],
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "logic",
    "code": "phase_violation"
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
        const params = { url: "/orders" };
        Object.defineProperty(params, "json", { enumerable: true, get() {
          ctx.api.post({ url: "/other", json: {} });
          return { id: prepared.data.id };
        } });
        await ctx.api.post(params); },
      async next(ctx, prepared, mutation) { return { saw: mutation.status }; },
    }),
  },
});
