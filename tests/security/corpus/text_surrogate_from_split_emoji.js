/* keepflow-attack
{
  "attack": "a title cut in the middle of an emoji pair",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "invalid_result",
    "message": [
      "$.title",
      "U+D83D"
    ]
  },
  "events": 0
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      const t = "Invoice \u{1F600}"; await ctx.publish("items", { messageId: "a", title: t.slice(0, t.length - 1), payload: {} });
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
