/* keepflow-attack
{
  "attack": "log lines and a thrown message with lone surrogates",
  "trigger": [
    "seed"
  ],
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "script_error",
    "message": [
      "boom \\ud800"
    ],
    "logs": [
      "first \\udc00 line"
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
      ctx.log("first \udc00 line"); console.warn({ k: "\ud800" }); throw new Error("boom \ud800");
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
