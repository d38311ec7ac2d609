/* keepflow-attack
{
  "attack": "a producer that polls every second",
  "deploy": "refused",
  "finding": [
    "interval 1s is shorter than the minimum of 30s"
  ]
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: { schedule: { interval: "1s" }, async handler(ctx, state) { return null; } },
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
