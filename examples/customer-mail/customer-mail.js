// Customer e-mail → a row in the support sheet → a message in Slack.
//
// Every five minutes a producer looks for new mail in the inbox (only messages that arrived
// since the last look: an IMAP UID cursor kept in the producer's state) and publishes one
// event per message from a customer's domain. Its messageId is the e-mail's Message-ID, so
// the same message is never logged twice, even when the cursor has to start over.
//
// Two consumers, one mutation each:
//   logToSheet — appends a row to the support sheet. The Sheets API takes no idempotency
//     key, so the row carries the Message-ID in its "Message id" column (`key_column`), and
//     an uncertain append is reconciled by looking for that row
//     (docs/connectors.md#google_sheets). When the row is in, `next` publishes a follow-up.
//   tellSlack — posts in the support channel, naming the row. The post carries the
//     idempotency key in its metadata, so a lost answer is reconciled from the channel's
//     history (docs/connectors.md#slack).
//
// Connections (connections.toml): `mail` (email), `sheet` (google_sheets) and `team`
// (slack); see connections.example.toml. Edit the constants below.
const CUSTOMER_DOMAINS = ["customer.example", "bigclient.example"];
const SHEET = { spreadsheet: "1SupportSheetIdFromItsUrl", sheet: "Customer mail" };
const SLACK_CHANNEL = "C0SUPPORT"; // the channel's id (channel details → bottom of "About")

function domainOf(address) {
  const at = (address ?? "").lastIndexOf("@");
  return at < 0 ? "" : address.slice(at + 1).replace(/>$/, "").toLowerCase();
}

export default Keep.workflow({
  name: "customer-mail",
  topics: { "mail.received": {}, "mail.logged": {} },
  producers: {
    pollInbox: {
      schedule: { interval: "5m" },
      async handler(ctx, state) {
        // A new UIDVALIDITY means the server renumbered the folder: start over (the
        // messageIds keep the events from being published twice).
        const fresh = state?.uidvalidity === undefined;
        let since = fresh ? undefined : state.next_uid;
        let r = await ctx.mail.search({ folder: "INBOX", since_uid: since, limit: 50 });
        if (!fresh && r.uidvalidity !== state.uidvalidity) {
          since = undefined;
          r = await ctx.mail.search({ folder: "INBOX", limit: 50 });
        }
        for (const m of r.messages) {
          if (!CUSTOMER_DOMAINS.includes(domainOf(m.from))) continue;
          // A sender chooses the Message-ID, and one longer than an event id may be (256)
          // must not block the inbox: keep its start and add the message's own id.
          const mid = m.message_id ?? m.id;
          await ctx.publish("mail.received", {
            messageId: mid.length <= 256 ? mid : `${mid.slice(0, 200)}#${m.id}`,
            title: `Email from ${m.from}: "${m.subject ?? "(no subject)"}"`.slice(0, 200),
            payload: { id: m.id, from: m.from, subject: m.subject, date: m.date,
                       snippet: m.snippet },
          });
        }
        return { uidvalidity: r.uidvalidity, next_uid: r.next_uid };
      },
    },
  },
  consumers: {
    logToSheet: Keep.consumer({
      subscribe: ["mail.received"],
      async prepare(ctx) {
        const [mail] = await ctx.peek("mail.received", { limit: 1 });
        if (!mail) return { reservations: [], data: {} };
        return {
          reservations: [{ topic: "mail.received", ids: [mail.messageId] }],
          data: { key: mail.messageId, mail: mail.payload },
          ui: { summary: `Log ${mail.title} in the support sheet` },
        };
      },
      async mutate(ctx, prepared) {
        const m = prepared.data.mail;
        await ctx.sheet.append_row({
          ...SHEET,
          key_column: "Message id",
          values: { "Message id": prepared.data.key, "Received": m.date ?? "",
                    "From": m.from ?? "", "Subject": m.subject ?? "",
                    "Snippet": (m.snippet ?? "").slice(0, 500) },
        });
      },
      async next(ctx, prepared, mutation) {
        if (mutation.status !== "applied") return null;
        const m = prepared.data.mail;
        await ctx.publish("mail.logged", {
          messageId: prepared.data.key,
          title: `Logged: email from ${m.from}: "${m.subject ?? "(no subject)"}"`.slice(0, 200),
          payload: { from: m.from, subject: m.subject, row: mutation.result.row },
        });
        return null;
      },
    }),
    tellSlack: Keep.consumer({
      subscribe: ["mail.logged"],
      async prepare(ctx) {
        const [logged] = await ctx.peek("mail.logged", { limit: 1 });
        if (!logged) return { reservations: [], data: {} };
        return {
          reservations: [{ topic: "mail.logged", ids: [logged.messageId] }],
          data: { logged: logged.payload },
        };
      },
      async mutate(ctx, prepared) {
        const l = prepared.data.logged;
        await ctx.team.post_message({
          channel: SLACK_CHANNEL,
          text: `New customer email from ${l.from}: "${l.subject ?? "(no subject)"}" ` +
                `(support sheet, row ${l.row})`,
        });
      },
      async next() { return null; },
    }),
  },
});
