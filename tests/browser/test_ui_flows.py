"""What a person does in the pages of a real `keepflow serve`, in a real browser (Debian's
chromium via Playwright): find what is stuck and answer it (each of the three answers to "did
it happen?"), skip an event, pause and resume, retry a failed run, watch a page refresh by
itself, use the keyboard — and screenshots of the main pages on desktop and phone, light and
dark (docs/ui.md). Every assertion is on what the page shows afterwards; the JSON API and the
sink (the external system's own record) only confirm it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import (
    BROKEN,
    DESKTOP,
    PHONE,
    Keepflow,
    Watch,
    new_page,
    screenshot_dir,
    until,
)
from tests.support.workflows import (
    BLIND_POST,
    RECONCILABLE_POST,
    consumer_js,
    seed_producer,
    workflow_js,
)

pytestmark = [pytest.mark.integration, pytest.mark.browser]

NEXT = "return { saw: mutation.status };"
FAILING = 'throw new Error("the order book is closed");'


def idle(topic: str = "items") -> str:
    """A consumer that never takes anything: its topic's events stay pending."""
    return consumer_js("idle", topic=topic, prepare="return { reservations: [], data: {} };")


def quiet(name: str) -> str:
    """A workflow with a manual producer and an idle consumer: nothing runs by itself."""
    return workflow_js(name=name, producers=seed_producer([f"{name}-1"]), consumers=idle())
BANNER = re.compile(r"^\d+ things? needs? you\.$")


# ------------------------------------------------------------------------------ helpers


def visit(page: Page, path: str) -> Page:
    page.goto(path)
    return clean(page)


def clean(page: Page) -> Page:
    """The page rendered: no traceback, no bare server error."""
    body = page.locator("body").inner_text()
    for bad in BROKEN:
        assert bad not in body, (page.url, body[:2000])
    return page


def badge(page: Page) -> Any:
    """The status badge of the page's heading."""
    return page.locator("h1 .badge")


def row(page: Page, text: str) -> Any:
    """The table row that shows ``text`` (a workflow name, an event title)."""
    return page.get_by_role("row").filter(has_text=text)


def phases(page: Page) -> Any:
    """The rows of a run's "Phases" table: one per recorded transition."""
    return page.locator("section[aria-labelledby='phases-h'] tbody tr")


def submit(page: Page, control: Any) -> Page:
    """Click a control that posts a form; the server answers with a redirect to a page."""
    with page.expect_navigation():
        control.click()
    return clean(page)


def stuck(kf: Keepflow, name: str, message_id: str, *, mutate: str = BLIND_POST,
          applied: bool = True) -> dict[str, Any]:
    """A workflow whose consumer's POST to the sink timed out after it was sent: the outcome
    is unknown and the run waits for a person. ``applied``: whether the sink did apply it."""
    kf.deploy(name, workflow_js(name=name, producers=seed_producer([message_id]),
                                consumers=consumer_js(mutate=mutate, next_=NEXT)))
    kf.sink.set_plan("apply_then_timeout" if applied else "timeout")
    if mutate == RECONCILABLE_POST:  # the lookups fail until the test clears them
        kf.sink.lookup_plan.extend(["unavailable_503"] * 50)
    kf.trigger(name, "seed")
    return kf.inbox_item(name, "unknown_outcome")


def find_stuck_workflow(page: Page, name: str) -> None:
    """From Automations: the banner says something needs the person, the row says which."""
    visit(page, "/")
    expect(page.locator(".banner strong")).to_have_text(BANNER)
    expect(row(page, name).locator(".badge").first).to_have_text("needs action")


def expect_unknown_outcome(page: Page, title: str) -> Any:
    item = page.locator("article.item").filter(has_text=title)
    expect(item.get_by_role("heading")).to_have_text(
        re.compile(r'^Did POST http://127\.0\.0\.1:\d+/orders for "' + re.escape(title)
                   + r'" happen\?$'))
    return item


# -------------------------------------------------------- 1. "did it happen?" — three answers


def test_try_again_reconciles_and_the_run_commits(page: Page, keepflow: Keepflow) -> None:
    """Found through the banner and Action needed; "Try again" asks the sink again, which now
    answers with the record: the run commits without sending the POST a second time."""
    item = stuck(keepflow, "answer-retry", "ta-1", mutate=RECONCILABLE_POST)
    find_stuck_workflow(page, "answer-retry")
    page.get_by_role("link", name=re.compile(r"^Open Action needed")).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Action needed")
    card = expect_unknown_outcome(page, "Item ta-1")
    card.get_by_role("link", name=f"run {item['run']}").click()
    expect(page).to_have_url(re.compile(f"/runs/{item['run']}$"))
    card = expect_unknown_outcome(page, "Item ta-1")
    expect(badge(page)).to_have_text("suspended")
    # all three answers are offered; "Try again" is a plain button (nothing dangerous)
    expect(card.get_by_role("link", name="It didn't happen…")).to_be_visible()
    expect(card.get_by_role("link", name="Skip…")).to_be_visible()

    keepflow.sink.lookup_plan.clear()  # the external system answers again
    submit(page, card.get_by_role("button", name="Try again"))
    expect(page).to_have_url(re.compile(f"/runs/{item['run']}$"))
    expect(badge(page)).to_have_text("committed")  # the page followed the run by itself
    expect(page.locator("article.item")).to_have_count(0)
    # ... and the one-time message of the answer stayed through those refreshes
    expect(page.locator("#flash")).to_contain_text("Try again: done")
    expect(page.locator(".card").filter(has_text="attempt 1").locator(".badge")
           ).to_have_text("applied")
    assert len(keepflow.applied("ta-1")) == 1  # looked up, never sent again
    assert keepflow.run(item["run"])["status"] == "committed"


def test_didnt_happen_asks_first_then_sends_it_again(page: Page, keepflow: Keepflow) -> None:
    """Found through the workflow's dashboard and its recent runs; "It didn't happen…" warns
    that it may happen twice — and here it did happen: the sink applies it a second time."""
    item = stuck(keepflow, "answer-redo", "dh-1")
    assert [c["answer"] for c in item["choices"]] == ["didnt_happen", "skip"]  # blind: no check
    find_stuck_workflow(page, "answer-redo")
    page.get_by_role("link", name="answer-redo", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("answer-redo")
    expect(badge(page)).to_have_text("needs action")
    runs = page.locator("section[aria-labelledby='runs-h']")
    row(runs, "suspended").get_by_role("link", name=item["run"]).click()
    card = expect_unknown_outcome(page, "Item dh-1")
    expect(card.get_by_role("button", name="Try again")).to_have_count(0)

    card.get_by_role("link", name="It didn't happen…").click()
    expect(page).to_have_url(re.compile(r"/confirm\?"))
    expect(page.get_by_role("heading", level=1)).to_have_text("It didn't happen?")
    expect(page.locator(".about")).to_contain_text('"Item dh-1"')
    expect(page.locator(".warn")).to_contain_text("If it did, it happens twice")
    assert len(keepflow.applied("dh-1")) == 1
    submit(page, page.get_by_role("button", name="Yes, it didn't happen"))
    expect(page).to_have_url(re.compile(f"/runs/{item['run']}$"))
    expect(badge(page)).to_have_text("committed")
    cards = page.locator(".card")
    expect(cards.filter(has_text="attempt 1").locator(".badge")).to_have_text("failed")
    expect(cards.filter(has_text="attempt 2").locator(".badge")).to_have_text("applied")
    expect(page.get_by_text("user:ui")).to_be_visible()
    assert len(keepflow.applied("dh-1")) == 2  # it had happened: now it happened twice


def test_skip_leaves_the_mutation_and_the_event_ends_skipped(page: Page, keepflow: Keepflow
                                                             ) -> None:
    """Found through the dashboard's "Unfinished run"; "Skip…" → the run commits with the
    mutation skipped, and the event's own page says skipped."""
    item = stuck(keepflow, "answer-skip", "sk-1")
    find_stuck_workflow(page, "answer-skip")
    page.get_by_role("link", name="answer-skip", exact=True).click()
    page.get_by_role("link", name=item["run"]).first.click()
    card = expect_unknown_outcome(page, "Item sk-1")
    card.get_by_role("link", name="Skip…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Skip?")
    expect(page.locator(".warn")).to_have_count(0)
    submit(page, page.get_by_role("button", name="Yes, skip"))
    expect(badge(page)).to_have_text("committed")
    expect(page.locator(".card").filter(has_text="attempt 1")).to_contain_text(
        "user:ui (skipped)")
    reserved = page.locator("section[aria-labelledby='resv-h'] li").filter(has_text="Item sk-1")
    expect(reserved.locator(".badge")).to_have_text("skipped")
    reserved.get_by_role("link", name="Item sk-1").click()
    clean(page)
    expect(badge(page)).to_have_text("skipped")
    history = page.locator("ol.timeline li")
    expect(history.last.locator(".badge")).to_have_text("skipped")
    assert len(keepflow.applied("sk-1")) == 1  # left as it was: not sent again
    assert keepflow.get("/api/workflows/answer-skip")["status"] == "active"


# --------------------------------------------------------------- 2. skip an event from the list


def test_skip_a_pending_event_from_the_events_list(page: Page, keepflow: Keepflow) -> None:
    kf = keepflow
    kf.deploy("events-skip", workflow_js(name="events-skip", consumers=idle(),
                                         producers=seed_producer(["e1", "e2", "e3"])))
    kf.trigger("events-skip", "seed")
    visit(page, "/workflows/events-skip")
    topic = row(page, "items")
    expect(topic.get_by_role("cell").nth(1)).to_have_text("3")  # pending
    topic.get_by_role("link", name="items").click()
    clean(page)
    expect(page.locator(".counts")).to_contain_text("3 pending · 0 consumed · 0 skipped")

    # the title filter
    page.get_by_label("Title contains").fill("Item e2")
    submit(page, page.get_by_role("button", name="Filter"))
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    page.get_by_role("link", name="clear").click()
    expect(page.locator("table.events tbody tr")).to_have_count(3)

    row(page, "Item e2").get_by_role("link", name="Skip event…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Skip event?")
    expect(page.locator(".about")).to_have_text("“Item e2” in items")
    submit(page, page.get_by_role("button", name="Yes, skip event"))
    expect(page).to_have_url(re.compile(r"/workflows/events-skip/topics/items$"))
    expect(page.locator("#flash")).to_contain_text("Skipped “Item e2”")
    expect(row(page, "Item e2").locator(".badge")).to_have_text("skipped")
    expect(row(page, "Item e2").get_by_role("link", name="Skip event…")).to_have_count(0)
    expect(page.locator(".counts")).to_contain_text("2 pending · 0 consumed · 1 skipped")

    # the status and date filters
    page.get_by_label("Status").select_option("skipped")
    submit(page, page.get_by_role("button", name="Filter"))
    expect(page.locator("table.events tbody tr")).to_have_count(1)
    expect(row(page, "Item e2")).to_be_visible()
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    page.get_by_label("Status").select_option("")
    page.get_by_label("From").fill(tomorrow)
    submit(page, page.get_by_role("button", name="Filter"))
    expect(page.get_by_text("No events match these filters.")).to_be_visible()
    page.get_by_label("From").fill("")
    page.get_by_label("Before").fill(tomorrow)
    submit(page, page.get_by_role("button", name="Filter"))
    expect(page.locator("table.events tbody tr")).to_have_count(3)

    row(page, "Item e2").get_by_role("link", name="Item e2").click()
    clean(page)
    expect(badge(page)).to_have_text("skipped")
    expect(page.locator("ol.timeline li").last.locator(".badge")).to_have_text("skipped")
    expect(page.get_by_role("link", name="Skip event…")).to_have_count(0)
    assert kf.get("/api/workflows/events-skip/topics/items/events/e2")["status"] == "skipped"


# --------------------------------------------------------------------- 3. pause and resume


def test_pause_and_resume_from_automations_are_audited_as_ui(page: Page, keepflow: Keepflow
                                                             ) -> None:
    keepflow.deploy("pause-resume", quiet("pause-resume"))
    visit(page, "/")
    wf = row(page, "pause-resume")
    expect(wf.locator(".badge").first).to_have_text("active")
    submit(page, wf.get_by_role("button", name="Pause"))
    expect(page.locator("#flash")).to_have_text("'pause-resume' is paused now.")
    expect(wf.locator(".badge").first).to_have_text("paused")
    expect(wf.get_by_role("button", name="Pause")).to_have_count(0)
    submit(page, wf.get_by_role("button", name="Resume"))
    expect(page.locator("#flash")).to_have_text("'pause-resume' is active now.")
    expect(wf.locator(".badge").first).to_have_text("active")

    visit(page, "/audit?workflow=pause-resume")
    entries = page.locator("table.list tbody tr")
    for action in ("workflow.paused", "workflow.active"):
        entry = entries.filter(has=page.get_by_role("cell", name=action, exact=True))
        expect(entry).to_have_count(1)
        expect(entry.get_by_role("cell").nth(1)).to_have_text("ui")


def test_an_inbound_token_is_made_shown_once_replaced_and_revoked(page: Page, keepflow: Keepflow
                                                                  ) -> None:
    """The workflow page's inbound-event token: made and shown once with how to use it; it
    publishes; replacing it stops the old one; revoking it stops every inbound event."""
    name = "inbound-ui"
    keepflow.deploy(name, quiet(name))
    events = f"/api/workflows/{name}/topics/items/events"

    def publish(token: str) -> int:
        return keepflow.api.post(events, json={"title": "From outside"},
                                 headers={"Authorization": f"Bearer {token}"}).status_code

    visit(page, f"/workflows/{name}")
    expect(page.get_by_text("No token yet: inbound events are refused.")).to_be_visible()
    submit(page, page.get_by_role("button", name="Make a token"))
    expect(page.get_by_role("heading", level=1)).to_have_text("Inbound-event token")
    first = page.locator("pre.token").inner_text().strip()
    assert first.startswith("kfi_")
    expect(page.locator("pre.code").nth(1)).to_contain_text(f"/api/workflows/{name}/topics/TOPIC/")
    assert publish(first) == 201
    visit(page, f"/workflows/{name}")
    expect(page.get_by_text("A token is set.")).to_be_visible()
    assert first not in page.content()  # shown that once only
    submit(page, page.get_by_role("button", name="Replace the token"))
    second = page.locator("pre.token").inner_text().strip()
    assert second != first
    assert publish(first) == 401
    assert publish(second) == 200
    visit(page, f"/workflows/{name}")
    submit(page, page.get_by_role("button", name="Revoke the token"))
    expect(page.locator("#flash")).to_contain_text("has no inbound-event token now")
    expect(page.get_by_text("No token yet: inbound events are refused.")).to_be_visible()
    assert publish(second) == 401


# ------------------------------------------------------------------- 4. retry a failed run


def test_retry_on_the_run_page_runs_it_again(page: Page, keepflow: Keepflow) -> None:
    name = "failing"
    keepflow.deploy(name, workflow_js(name=name, producers=seed_producer(["f1"]),
                                      consumers=consumer_js(mutate=FAILING)))
    keepflow.trigger(name, "seed")
    item = keepflow.inbox_item(name, "failed_run")
    visit(page, f"/workflows/{name}/runs")
    failed = row(page, "failed")
    expect(failed.locator(".badge.s-failed").last).to_have_text("logic")
    failed.get_by_role("link", name=item["run"]).click()
    clean(page)
    expect(badge(page)).to_have_text("failed")
    expect(page.locator("section.error > pre")).to_contain_text("the order book is closed")
    card = page.locator("article.item")
    expect(card.get_by_role("heading")).to_have_text('work failed (logic) on "Item f1"')
    before = phases(page).count()
    assert before >= 3
    submit(page, card.get_by_role("button", name="Retry"))
    expect(page).to_have_url(re.compile(f"/runs/{item['run']}$"))
    # the retry ran the script again (and it failed the same way): more steps are shown
    until(lambda: phases(page).count() > before, "the retried run's steps on the page", 10)
    expect(badge(page)).to_have_text("failed")
    expect(phases(page).filter(has_text="failed →")).not_to_have_count(0)
    assert len(keepflow.run(item["run"])["transitions"]) > before


# --------------------------------------------------------------------- 5. live refresh


def test_an_open_page_follows_a_change_made_elsewhere(page: Page, keepflow: Keepflow) -> None:
    keepflow.deploy("live", quiet("live"))
    visit(page, "/workflows/live")
    expect(badge(page)).to_have_text("active")
    expect(page.locator(".live-state")).to_have_text("live")
    page.evaluate("window.notReloaded = true")
    keepflow.post("/api/workflows/live/pause")  # from another client: the API
    expect(badge(page)).to_have_text("paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    keepflow.trigger("live", "seed")  # a new event appears in the topics table
    expect(row(page, "items").get_by_role("cell").nth(1)).to_have_text("1")
    keepflow.post("/api/workflows/live/resume")
    expect(badge(page)).to_have_text("active")
    assert page.evaluate("window.notReloaded") is True  # swapped in, not reloaded


# -------------------------------------------------------------------------- 6. keyboard


def test_keyboard_skip_link_first_and_enter_confirms(page: Page, keepflow: Keepflow) -> None:
    keepflow.deploy("keys", quiet("keys"))
    visit(page, "/workflows/keys")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()  # shown when focused
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/workflows/keys#main$"))

    page.get_by_role("link", name="Disable…").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Disable?")
    yes = page.get_by_role("button", name="Yes, disable")
    expect(yes).to_be_focused()
    # a live refresh (something changed elsewhere) keeps the focus on "Yes"
    page.evaluate("document.getElementById('page').dataset.before = 'yes'")
    keepflow.trigger("keys", "seed")
    expect(page.locator("#page[data-before]")).to_have_count(0)
    expect(yes).to_be_focused()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    clean(page)
    expect(page).to_have_url(re.compile(r"/workflows/keys$"))
    expect(page.locator("#flash")).to_have_text("'keys' is disabled now.")
    expect(badge(page)).to_have_text("disabled")


# ---------------------------------------------------------------------------- screenshots


def test_screenshots_of_the_main_pages(browser: Any, keepflow: Keepflow) -> None:
    """Full-page PNGs on desktop and phone, light and dark; none with a console error (a CSP
    violation would be one) or a server error."""
    name = "shots"
    kf = keepflow
    kf.deploy(name, workflow_js(
        name=name, topics=("orders", "later"),
        producers=seed_producer(["o-1001"], topic="orders")
        + seed_producer(["n-1", "n-2", "n-3"], topic="later").replace("seed:", "more:"),
        consumers=consumer_js(topic="orders", mutate=BLIND_POST, next_=NEXT) + idle("later")))
    kf.trigger(name, "more")
    kf.sink.set_plan("apply_then_timeout")
    kf.trigger(name, "seed")
    item = kf.inbox_item(name, "unknown_outcome")
    confirm = (f"/confirm?action=didnt_happen&target=/ui/runs/{item['run']}/didnt_happen"
               f"&back=/runs/{item['run']}")
    pages = {
        "automations": "/",
        "workflow": f"/workflows/{name}",
        "events": f"/workflows/{name}/topics/later",
        "event": f"/workflows/{name}/topics/later/events/n-1",
        "run": f"/runs/{item['run']}",
        "inbox": "/inbox",
        "confirm": confirm,
    }
    out = screenshot_dir()
    made = []
    for device, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        for scheme in ("light", "dark"):
            watch = Watch()
            context, page = new_page(browser, kf.url, watch, viewport=viewport,
                                     dark=scheme == "dark")
            try:
                for label, path in pages.items():
                    visit(page, path)
                    expect(page.locator("main h1")).to_be_visible()
                    page.wait_for_load_state("load")
                    width = page.evaluate("document.documentElement.scrollWidth")
                    assert width <= viewport["width"], (label, device, width)  # no sideways
                    file = out / f"{label}-{device}-{scheme}.png"
                    page.screenshot(path=str(file), full_page=True)
                    made.append(file)
                    assert not watch.problems, watch.problems
            finally:
                context.close()
    assert len(made) == 28
    assert all(f.stat().st_size > 5000 for f in made)
