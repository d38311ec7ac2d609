"""The mutation is terminal and unique (SPEC §5.2, §11.1, §11.3 stage 2)."""

from __future__ import annotations

import pytest
from validation_samples import TOOL_KINDS, errors, marked_line, script

from keepflow.sandbox.static import analyze


def mutate_findings(body: str, top: str = "") -> list[tuple[str, int | None]]:
    report = analyze(script(mutate=body, top=top), TOOL_KINDS)
    return [(f.rule, f.line) for f in errors(report.findings)]


BAD = {
    "statement after it": (
        "code-after-mutation",
        """await ctx.sql.insert({ table: "t" });
        ctx.log("inserted");  // HERE""",
    ),
    "not awaited, then more code": (
        "code-after-mutation",
        """ctx.sql.insert({ table: "t" });
        return { ok: true };  // HERE""",
    ),
    "enclosing catch": (
        "code-after-mutation",
        """try {
          await ctx.sql.insert({ table: "t" });
        } catch (e) {  // HERE
          ctx.log(String(e));
        }""",
    ),
    "enclosing finally": (
        "code-after-mutation",
        """try {
          await ctx.sql.insert({ table: "t" });
        } finally {  // HERE
          ctx.log("done");
        }""",
    ),
    "then chained": (
        "code-after-mutation",
        """await ctx.sql.insert({ table: "t" }).then((r) => r.id);  // HERE""",
    ),
    "catch chained": (
        "code-after-mutation",
        """return ctx.http.post({ url: "https://x.example.com/" }).catch(() => null);  // HERE""",
    ),
    "result assigned": (
        "code-after-mutation",
        """const row = await ctx.sql.insert({ table: "t" });  // HERE""",
    ),
    "result passed on": (
        "code-after-mutation",
        """ctx.log(await ctx.sql.insert({ table: "t" }));  // HERE""",
    ),
    "returned inside a value": (
        "code-after-mutation",
        """return { row: await ctx.sql.insert({ table: "t" }) };  // HERE""",
    ),
    "after the if holding it": (
        "code-after-mutation",
        """if (prepared.data.id) {
          await ctx.sql.insert({ table: "t" });
        }
        ctx.log("after");  // HERE""",
    ),
    "two mutations in a row": (
        "second-mutation",
        """await ctx.sql.insert({ table: "a" });
        await ctx.http.post({ url: "https://x.example.com/" });  // HERE""",
    ),
    "mutation in a for-of loop": (
        "second-mutation",
        """for (const row of prepared.data.rows) {
          await ctx.sql.insert({ table: "t", values: row });  // HERE
        }""",
    ),
    "mutation in a while loop": (
        "second-mutation",
        """let i = 0;
        while (i < 3) { i++; await ctx.sql.insert({ table: "t" }); }  // HERE""",
    ),
    "mutation in a map callback": (
        "second-mutation",
        """await Promise.all(
          prepared.data.rows.map((r) => ctx.sql.insert({ values: r })),  // HERE
        );""",
    ),
    "mutation in a forEach callback": (
        "second-mutation",
        """prepared.data.rows.forEach(async (r) => {
          await ctx.sql.insert({ values: r });  // HERE
        });""",
    ),
    "through arguments[0], then more code": (
        "code-after-mutation",
        """await arguments[0].sql.insert({ table: "t" });
        ctx.log("inserted");  // HERE""",
    ),
    "parenthesized ctx, then a second mutation": (
        "second-mutation",
        """await (ctx).sql.insert({ table: "a" });
        await ctx?.sql?.insert({ table: "b" });  // HERE""",
    ),
    "local helper called twice": (
        "second-mutation",
        """const save = async (v) => { await ctx.sql.insert({ values: v }); };
        await save(1);
        await save(2);  // HERE""",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_mutate_violation_is_reported_with_its_line(case: str) -> None:
    rule, body = BAD[case]
    src = script(mutate=body)
    found = mutate_findings(body)
    assert (rule, marked_line(src)) in found, found


def test_code_after_a_try_around_the_mutation_is_reported() -> None:
    body = """try {
          await ctx.sql.insert({ table: "t" });
        } catch (e) {
          throw e;
        }
        ctx.log("after");  // HERE"""
    found = mutate_findings(body)
    assert ("code-after-mutation", marked_line(script(mutate=body))) in found
    assert [r for r, _ in found].count("code-after-mutation") == 2  # the catch and the log


def test_top_level_helper_making_the_mutation_counts_as_the_mutation() -> None:
    top = """async function save(db, row) {
  await db.sql.insert({ table: "t", values: row });
  db.log("saved");  // HELPER
}"""
    body = """await save(ctx, prepared.data);
        await ctx.sql.update({ table: "t" });  // HERE"""
    src = script(mutate=body, top=top)
    found = mutate_findings(body, top)
    assert ("second-mutation", marked_line(src)) in found
    assert ("code-after-mutation", marked_line(src, "// HELPER")) in found


LEGAL = {
    "SPEC style: awaited as the last statement": """await ctx.sql.insert({ table: "t" });""",
    "returned": """return ctx.sql.insert({ table: "t" });""",
    "return await": """return await ctx.sql.insert({ table: "t" });""",
    "not awaited, last": """ctx.sql.insert({ table: "t" });""",
    "last in each if/else branch": """if (prepared.data.kind === "new") {
          await ctx.sql.insert({ table: "t", values: prepared.data.row });
        } else if (prepared.data.kind === "changed") {
          await ctx.sql.update({ table: "t", values: prepared.data.row });
        } else {
          ctx.log("nothing to do");
        }""",
    "early return before the mutation": """if (!prepared.data.row) return;
        const existing = await ctx.sql.get({ table: "t", id: prepared.data.id });
        if (existing) {
          return;
        }
        await ctx.sql.insert({ table: "t", values: prepared.data.row });""",
    "returned from inside a loop": """for (const row of prepared.data.rows) {
          if (row.ok) return ctx.sql.insert({ table: "t", values: row });
        }""",
    "loop left with break": """for (const row of prepared.data.rows) {
          if (row.ok) { await ctx.sql.insert({ table: "t", values: row }); break; }
        }""",
    "switch cases with break": """switch (prepared.data.kind) {
          case "a": await ctx.sql.insert({ table: "a" }); break;
          case "b": await ctx.sql.update({ table: "b" }); break;
          default: ctx.log("none");
        }""",
    "ternary of two mutations": """return prepared.data.id
          ? ctx.sql.update({ table: "t", id: prepared.data.id })
          : ctx.sql.insert({ table: "t" });""",
    "guarded with &&": """prepared.data.ok && await ctx.sql.insert({ table: "t" });""",
    "comments and a bare return after it": """await ctx.sql.insert({ table: "t" });  // terminal
        /* nothing else */
        return;""",
    "by-id read with then before it": """const row = await ctx.sql.get({ id: 1 })
          .then((r) => r ?? {});
        await ctx.sql.insert({ table: "t", values: row });""",
    "by-id read then mutation in the callback": """return ctx.sql
          .get({ id: prepared.data.id })
          .then((row) => ctx.sql.update({ table: "t", values: row }));""",
    "try/catch only around a by-id read": """let row = null;
        try { row = await ctx.sql.get({ id: 1 }); } catch (e) { ctx.log("no row"); }
        await ctx.sql.insert({ table: "t", values: row });""",
    "unused local helper": """const unused = async () => ctx.sql.update({ table: "x" });
        await ctx.sql.insert({ table: "t" });""",
    "no mutation at all": """ctx.log("nothing to do");""",
    "template strings mentioning a mutation": """const note = `ctx.sql.insert(${prepared.data.id})`;
        await ctx.http.post({ url: `https://api.example.com/notes/${prepared.data.id}`,
                              body: note });""",
}


@pytest.mark.parametrize("case", list(LEGAL), ids=list(LEGAL))
def test_legal_mutate_has_no_findings(case: str) -> None:
    report = analyze(script(mutate=LEGAL[case]), TOOL_KINDS)
    assert report.findings == []


def test_arrow_expression_body_mutate_is_terminal() -> None:
    src = script().replace(
        "async mutate(ctx, prepared) {", "mutate: (c, p) => c.sql.insert({ table: 't' }),\n  x() {"
    )
    report = analyze(src, TOOL_KINDS)
    assert report.findings == []
    assert [(c.phase, c.tool) for c in report.calls] == [("mutate", "insert")]
