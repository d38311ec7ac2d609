// Feeds → one morning e-mail digest.
//
// Every morning at 7 a producer fetches each feed — conditionally, so a feed that has not
// changed costs one "304 Not Modified" — and publishes one event per item. An item seen
// again the next day is not published twice: its messageId is the item's stable id
// (docs/connectors.md#feed). One consumer then takes every new item at once and sends a
// single digest: its one mutation. The e-mail's Message-ID comes from the ledger's
// idempotency key, and a copy kept in the Sent folder records how far the sending got, so a
// crash or a dropped connection never sends the digest twice and never loses it
// (docs/connectors.md#email).
//
// Connections (connections.toml): `news` (type "feed", `allow` = the feeds' sites) and
// `mail` (type "email"); see connections.example.toml. Edit FEEDS and DIGEST_TO.
const FEEDS = [
  "https://blog.example.org/feed.xml",
  "https://status.example.com/history.atom",
];
const DIGEST_TO = "me@example.com";
const MAX_ITEMS = 50; // items in one digest; more wait for the next one

export default Keep.workflow({
  name: "feed-digest",
  topics: { "item.new": {} },
  producers: {
    pollFeeds: {
      schedule: { cron: "0 7 * * *", tz: "Europe/Berlin" },
      async handler(ctx, state) {
        const known = state?.feeds ?? {};
        const feeds = {};
        for (const url of FEEDS) {
          const last = known[url] ?? {};
          const r = await ctx.news.fetch({ url, etag: last.etag, modified: last.modified });
          feeds[url] = { etag: r.etag ?? last.etag, modified: r.modified ?? last.modified };
          if (r.status === 304) continue; // unchanged since the last fetch
          const source = r.feed?.title ?? url;
          for (const item of r.items) {
            await ctx.publish("item.new", {
              messageId: item.id,
              title: `${source}: ${item.title ?? item.link ?? item.id}`.slice(0, 200),
              payload: { source, title: item.title, link: item.link,
                         published: item.published, summary: item.summary },
            });
          }
        }
        return { feeds };
      },
    },
  },
  consumers: {
    mailDigest: Keep.consumer({
      subscribe: ["item.new"],
      async prepare(ctx) {
        const items = await ctx.peek("item.new", { limit: MAX_ITEMS });
        if (!items.length) return { reservations: [], data: {} };
        return {
          reservations: [{ topic: "item.new", ids: items.map((i) => i.messageId) }],
          data: { items: items.map((i) => i.payload) },
          ui: { summary: `Mail a digest of ${items.length} new item(s) to ${DIGEST_TO}` },
        };
      },
      async mutate(ctx, prepared) {
        const items = prepared.data.items;
        const text = items.map((i) => {
          const when = i.published ? ` (${i.published.slice(0, 10)})` : "";
          const summary = i.summary ? `\n  ${i.summary.slice(0, 300)}` : "";
          return `* ${i.title ?? "(untitled)"} — ${i.source}${when}\n  ${i.link ?? ""}${summary}`;
        }).join("\n\n");
        await ctx.mail.send({
          to: DIGEST_TO,
          subject: `Your feeds: ${items.length} new item${items.length === 1 ? "" : "s"}`,
          text,
        });
      },
      async next(ctx, prepared, mutation) {
        if (mutation.status === "applied")
          ctx.log(`digest of ${prepared.data.items.length} item(s) sent`);
        return null;
      },
    }),
  },
});
