/* keepflow-attack
{
  "attack": "new Function building a handler body from a string",
  "deploy": "refused",
  "finding": [
    "Function"
  ]
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => { const f = new Function("ctx", "return ctx.publish"); return null; },
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
