/* keepflow-attack
{
  "attack": "eval in a handler (refused before anything runs)",
  "deploy": "refused",
  "finding": [
    "eval"
  ]
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => { eval("ctx.http.post({ url: \"http://example.org\" })"); return null; },
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
