"""Bounded waits on what a language server sends (no sleeps: every notification wakes us)."""

from __future__ import annotations

import asyncio

from pytest_lsp import LanguageClient

from tests.conftest import make_client


def make_watching_client() -> LanguageClient:
    """The shared test client, plus an event set on every notification."""
    client = make_client()
    client.notified = asyncio.Event()
    original = client.protocol._handle_notification

    def handle(method, params):
        original(method, params)
        client.notified.set()

    client.protocol._handle_notification = handle
    return client


async def wait_until(client: LanguageClient, predicate, timeout: float, what: str):
    """Wait for notifications until `predicate()` holds; AssertionError after `timeout` s."""

    async def watch():
        while not predicate():
            client.notified.clear()
            await client.notified.wait()

    try:
        await asyncio.wait_for(watch(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None


def state_since(client: LanguageClient, mark: int, state: str):
    """A predicate: a phi/status with `state` arrived after the first `mark` ones."""
    return lambda: any(s.state == state for s in client.statuses[mark:])
