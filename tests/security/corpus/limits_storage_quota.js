/* keepflow-attack
{
  "attack": "a workflow fills its storage quota (here 1 MiB)",
  "trigger": [
    "seed"
  ],
  "events": 0,
  "policy": {
    "limits": {
      "workflow_storage_bytes": 1048576
    }
  },
  "run": {
    "handler": "seed",
    "status": "failed",
    "class": "logic",
    "code": "quota_exceeded",
    "message": [
      "storage quota of 1,048,576 bytes",
      "nothing of the run was committed"
    ]
  }
}
*/
export default Keep.workflow({
  name: "attack",
  topics: { "items": {} },
  producers: {
    seed: async (ctx, state) => { 
      const big = "y".repeat(250000);
      for (let i = 0; i < 5; i++) {
        await ctx.publish("items", { messageId: "q" + i, title: "Item " + i, payload: { big } });
      }
      return { done: true }; },
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
