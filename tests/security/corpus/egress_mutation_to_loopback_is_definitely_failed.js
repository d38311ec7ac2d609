/* keepflow-attack
{
  "attack": "a mutation POSTs to a loopback service through the default connection: refused before sending, so the ledger says failed, never indeterminate",
  "trigger": [
    "seed"
  ],
  "sent": 0,
  "ledger": [
    "failed"
  ],
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "permission",
    "code": "permission"
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      await ctx.publish("items", { messageId: "a", title: "A", payload: {} }); return null;
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx) {
        const [e] = await ctx.peek("items", { limit: 1 });
        if (!e) return { reservations: [], data: {} };
        return { reservations: [{ topic: "items", ids: [e.messageId] }], data: {} };
      },
      async mutate(ctx, prepared) {
        await ctx.http.post({ url: "http://127.0.0.1:__SINK_PORT__/orders", json: { x: 1 } });
      },
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
