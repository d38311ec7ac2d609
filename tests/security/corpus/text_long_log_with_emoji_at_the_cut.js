/* keepflow-attack
{
  "attack": "a log line longer than the cap with an emoji pair right at the cut",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "committed",
    "logs": [
      "truncated"
    ]
  },
  "events": 1
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      ctx.log("x".repeat(4095) + "\u{1F600}" + "y".repeat(100)); await ctx.publish("items", { messageId: "a", title: "ok", payload: {} });
      return { ok: 1 };
    },
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
