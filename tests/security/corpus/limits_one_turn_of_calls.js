/* keepflow-attack
{
  "attack": "40 publishes of 250 KB in one turn (Promise.all): more than a message may carry",
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
      "in one turn"
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => { 
      const big = "z".repeat(250000);
      await Promise.all(Array.from({ length: 40 }, (_, i) =>
        ctx.publish("items", { messageId: "b" + i, title: "Item " + i, payload: { big } })));
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
