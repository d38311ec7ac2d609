/* keepflow-attack
{
  "attack": "the default http connection reads a loopback service (e.g. keepflow's own API)",
  "trigger": [
    "seed"
  ],
  "events": 0,
  "sent": 0,
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "permission",
    "code": "permission",
    "message": [
      "loopback",
      "allow = ["
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      const r = await ctx.http.get({ url: "__SINK_URL__/api/status" });
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
