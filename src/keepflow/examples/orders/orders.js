// Orders → invoices → accounting notification.
//
// A producer reads new orders from the shop's database (read-only), one consumer records an
// invoice for each order in the books database, a second consumer notifies accounting by
// writing a row into its database. `keepflow init --example orders` creates the three SQLite
// databases and their connections, so this script deploys and runs on a fresh home.
// Each consumer makes at most one mutation, as the last thing its `mutate` does.
export default Keep.workflow({
  name: "orders",
  topics: {
    "order.received": {},
    "invoice.recorded": {},
  },
  producers: {
    pollOrders: {
      schedule: { interval: "1m" },
      async handler(ctx, state) {
        const after = state?.lastId ?? 0;
        const res = await ctx.shop.query({
          sql: "SELECT id, customer, amount FROM orders WHERE id > :after ORDER BY id LIMIT 50",
          params: { after },
        });
        for (const o of res.rows) {
          await ctx.publish("order.received", {
            messageId: `order-${o.id}`,
            title: `Order #${o.id} from ${o.customer} (${o.amount} EUR)`,
            payload: o,
          });
        }
        const last = res.rows.length ? res.rows[res.rows.length - 1].id : after;
        return { lastId: last };
      },
    },
  },
  consumers: {
    recordInvoice: Keep.consumer({
      subscribe: ["order.received"],
      async prepare(ctx) {
        const [order] = await ctx.peek("order.received", { limit: 1 });
        if (!order) return { reservations: [], data: {} };
        return {
          reservations: [{ topic: "order.received", ids: [order.messageId] }],
          data: { order: order.payload, title: order.title },
          ui: { summary: `Record an invoice for ${order.title}` },
        };
      },
      async mutate(ctx, prepared) {
        const o = prepared.data.order;
        await ctx.books.insert({
          table: "invoices",
          values: { order_id: o.id, customer: o.customer, amount: o.amount },
          key: { order_id: o.id },
        });
      },
      async next(ctx, prepared, mutation) {
        if (mutation.status === "applied") {
          const o = prepared.data.order;
          await ctx.publish("invoice.recorded", {
            messageId: `invoice-${o.id}`,
            title: `Invoice for order #${o.id} from ${o.customer}`,
            payload: { orderId: o.id, customer: o.customer, amount: o.amount },
          });
        }
        return null;
      },
    }),
    notifyAccounting: Keep.consumer({
      subscribe: ["invoice.recorded"],
      async prepare(ctx) {
        const [inv] = await ctx.peek("invoice.recorded", { limit: 1 });
        if (!inv) return { reservations: [], data: {} };
        return {
          reservations: [{ topic: "invoice.recorded", ids: [inv.messageId] }],
          data: { invoice: inv.payload },
        };
      },
      async mutate(ctx, prepared) {
        const inv = prepared.data.invoice;
        await ctx.accounting.insert({
          table: "notifications",
          values: { invoice_order_id: inv.orderId,
                    text: `New invoice: ${inv.customer}, ${inv.amount} EUR` },
          key: { invoice_order_id: inv.orderId },
        });
      },
      async next(ctx, prepared, mutation) {
        return null;
      },
    }),
  },
});
