"""asyncio helpers shared by the runs that a Ctrl-C must stop: builds, scans, scrapes."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_interruptibly(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run(coro), except that a Ctrl-C (SIGINT in the main thread) while it runs
    always ends in KeyboardInterrupt. asyncio.run's own handler cancels the main task and
    raises KeyboardInterrupt only if that cancellation is what ends it; a run whose task
    ended otherwise lost the Ctrl-C and went on to the end. Here the signal cancels the
    task and is remembered, however the task then ends; a second one stops at once."""
    interrupted = False

    async def main() -> T:
        nonlocal interrupted
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def on_sigint() -> None:
            nonlocal interrupted
            if interrupted:  # a second Ctrl-C: stop waiting for the clean-up
                raise KeyboardInterrupt
            interrupted = True
            if task is not None:
                task.cancel()

        watching = threading.current_thread() is threading.main_thread()
        if watching:
            try:
                loop.add_signal_handler(signal.SIGINT, on_sigint)
            except (NotImplementedError, RuntimeError, ValueError):
                watching = False
        try:
            return await coro
        finally:
            if watching:
                loop.remove_signal_handler(signal.SIGINT)

    try:
        result = asyncio.run(main())
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    if interrupted:
        raise KeyboardInterrupt
    return result
