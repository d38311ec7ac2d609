/* keepflow-attack
{
  "attack": "one run publishes many events just under the payload limit (about 5 MB in all)",
  "trigger": [
    "seed"
  ],
  "events": 0,
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "sandbox_limit",
    "message": [
      "limits.publish_bytes_per_run"
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => { 
      const big = "x".repeat(250000);
      for (let i = 0; i < 20; i++) {
        await ctx.publish("items", { messageId: "m" + i, title: "Item " + i, payload: { big } });
      }
      return null; },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx) { return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) {},
      async next(ctx, prepared, mutation) { return null; },
    }),
  },
});
