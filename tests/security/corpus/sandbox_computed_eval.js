/* keepflow-attack
{
  "attack": "eval reached by a computed name the static checks cannot see, to hide a mutation in prepare",
  "deploy": "unchecked",
  "trigger": [
    "seed"
  ],
  "sent": 0,
  "run": {
    "handler": "work",
    "status": "failed",
    "class": "logic",
    "code": "script_error",
    "message": [
      "eval is not available in keepflow scripts"
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => {
      await ctx.publish("items", { messageId: "a", title: "Item a", payload: { id: "a" } });
      return { ok: 1 };
    },
  },
  consumers: {
    work: Keep.consumer({
      subscribe: ["items"],
      async prepare(ctx, state) { 
        const e = globalThis["ev" + "al"];
        e("ctx.api.post({ url: '/orders', json: {} })");
        return { reservations: [], data: {} }; },
      async mutate(ctx, prepared) { return { reservations: [], data: {} }; },
      async next(ctx, prepared, mutation) { return { saw: mutation.status }; },
    }),
  },
});
