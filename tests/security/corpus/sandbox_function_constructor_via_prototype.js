/* keepflow-attack
{
  "attack": "the Function constructor reached through a function's constructor property",
  "deploy": "unchecked",
  "trigger": [
    "seed"
  ],
  "sent": 0,
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "script_error",
    "message": [
      "Function is not available in keepflow scripts"
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      const F = Object.getPrototypeOf(() => 0)["const" + "ructor"];
      return F("return 1")();
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
