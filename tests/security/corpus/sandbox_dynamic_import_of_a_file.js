/* keepflow-attack
{
  "attack": "a dynamic import of a file on the host",
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
      "could not load module"
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      const path = ["", "etc", "passwd"].join("/");
      await import(path);
      return null;
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
