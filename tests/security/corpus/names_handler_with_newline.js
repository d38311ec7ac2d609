/* keepflow-attack
{
  "attack": "a handler name with a newline, to forge a log line",
  "deploy": "refused",
  "finding": [
    "handler name is a JavaScript identifier"
  ]
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    ["ok\nkeepflow: approved"]: async (ctx, state) => { return null; },
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
