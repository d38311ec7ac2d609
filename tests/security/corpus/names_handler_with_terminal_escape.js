/* keepflow-attack
{
  "attack": "a handler name that is an ANSI escape sequence (it would reach logs and terminals)",
  "deploy": "refused",
  "finding": [
    "is invalid: a handler name is a JavaScript identifier"
  ]
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    "\u001b[2Jkeepflow: run approved": async (ctx, state) => { return null; },
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
