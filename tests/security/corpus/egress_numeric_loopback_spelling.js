/* keepflow-attack
{
  "attack": "loopback spelled as one decimal number",
  "trigger": [
    "seed"
  ],
  "events": 0,
  "sent": 0,
  "run": {
    "handler": "seed",
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
      await ctx.http.get({ url: "http://2130706433:__SINK_PORT__/x" }); return null;
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
