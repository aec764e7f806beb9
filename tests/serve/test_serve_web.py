"""The web chat page at `/`, end to end in headless Chromium (Debian's /usr/bin/chromium driven by playwright)."""

import json
import os

import pytest
from serve_api_helpers import served, wait_for

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def page_url():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    with served() as (url, engine):
        yield url, engine


def test_serve_web_chat_streams_keeps_history_and_stops(page_url):
    from playwright.sync_api import expect, sync_playwright

    url, engine = page_url
    sent = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith(
                "/v1/chat/completions") else None)
            page.goto(url + "/")
            expect(page.locator("#model-name")).to_have_text("tiny-test")
            page.fill("#temperature", "0.5")
            page.fill("#max-tokens", "12")

            # first turn: streamed text appears in the assistant bubble
            page.fill("#prompt", "What is the capital of France?")
            page.press("#prompt", "Enter")
            reply = page.locator(".msg.assistant").nth(0)
            expect(reply).not_to_have_text("", timeout=60_000)
            expect(page.locator("body")).to_have_attribute("data-state", "idle", timeout=60_000)
            first = reply.inner_text()
            assert first.strip()
            assert sent[0]["stream"] is True and sent[0]["max_tokens"] == 12 and sent[0]["temperature"] == 0.5
            assert sent[0]["messages"] == [{"role": "user", "content": "What is the capital of France?"}]

            # second turn: the request carries the whole conversation
            page.fill("#prompt", "And of Italy?")
            page.click("#send")
            expect(page.locator("body")).to_have_attribute("data-state", "idle", timeout=60_000)
            assert [m["role"] for m in sent[1]["messages"]] == ["user", "assistant", "user"]
            assert sent[1]["messages"][1]["content"] == first and sent[1]["messages"][2]["content"] == "And of Italy?"
            expect(page.locator(".msg.assistant").nth(1)).not_to_have_text("")

            # stop: a long answer is cut off, and the server lets go of the request
            baseline = engine.stats().num_blocks_used
            page.fill("#max-tokens", "400")
            page.fill("#prompt", "Tell me a very long story.")
            page.click("#send")
            third = page.locator(".msg.assistant").nth(2)
            expect(third).not_to_have_text("", timeout=60_000)
            expect(page.locator("#stop")).to_be_enabled()
            page.click("#stop")
            expect(page.locator("body")).to_have_attribute("data-state", "idle", timeout=10_000)
            expect(third).to_have_class("msg assistant stopped")
            assert len(page.evaluate("() => state.history")) == 6  # the stopped reply stays in the history
            assert wait_for(lambda: engine.stats().num_running == 0 and engine.stats().num_blocks_used <= baseline, 20)
        finally:
            browser.close()
