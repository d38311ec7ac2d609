/* keepflow-attack
{
  "attack": "by-id reads queued right after the terminal mutation (not awaited): nothing is sent",
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
    "code": "phase_violation",
    "message": [
      "a call after the terminal mutation"
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
      return null;
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx, state) {
        const [e] = await ctx.peek("items", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "items", ids: [e.messageId] }], data: { id: e.messageId } };
      },
      async mutate(ctx, prepared) {
        ctx.api.post({ url: "/orders", json: { id: prepared.data.id } });
        ctx.getByIds("items", ["a"]);
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
