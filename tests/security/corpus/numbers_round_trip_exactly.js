/* keepflow-attack
{
  "attack": "a state holding 2**53 and 1e21 comes back as numbers, not strings (1e21 returns from PostgreSQL's jsonb as an integer)",
  "trigger": [
    "seed",
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "committed",
    "logs": [
      "number number 9007199254740992 1e+21"
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      if (state) ctx.log(typeof state.t, typeof state.big, String(state.t), String(state.big));
      return { t: 2 ** 53, big: 1e21 };
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
