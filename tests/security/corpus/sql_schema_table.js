/* keepflow-attack
{
  "attack": "the schema table sqlite_master",
  "trigger": [
    "seed"
  ],
  "events": 0,
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "permission",
    "code": "permission",
    "message": []
  },
  "never_stored": [
    "TOPSECRET-4242"
  ]
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      const r = await ctx.shop.query({ sql: "SELECT sql FROM sqlite_master" });
      await ctx.publish("items", { messageId: "leak", title: "leak", payload: r });
      return null;
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
