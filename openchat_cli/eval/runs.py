"""What answer, judge and grade runs share: looking runs up, guarding against Ctrl-C / kill,
worker pools that stop cleanly (and share a run with another process), and status bookkeeping
in the catalog."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from openchat_cli.errors import OpenchatError
from store.catalog import Catalog, CatalogError, looks_like_id, now
from store.claims import UnitClaims

T = TypeVar("T")


class Interrupted(OpenchatError):
    def __init__(self, message: str = "interrupted"):
        super().__init__(message, exit_code=130)


def run_guarded(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; Ctrl-C and SIGTERM cancel it cleanly and raise `Interrupted`.

    Work already written to the catalog stays; the caller marks the run interrupted.
    """
    terminated = {"flag": False}

    async def main() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        installed = False
        if threading.current_thread() is threading.main_thread() and task is not None:

            def on_term() -> None:
                terminated["flag"] = True
                task.cancel()

            try:
                loop.add_signal_handler(signal.SIGTERM, on_term)
                installed = True
            except (NotImplementedError, RuntimeError, ValueError):
                pass
        try:
            return await coro_factory()
        finally:
            if installed:
                loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        raise Interrupted("interrupted (Ctrl-C)") from None
    except asyncio.CancelledError:
        raise Interrupted("terminated" if terminated["flag"] else "cancelled") from None


async def worker_pool(items: Iterable[Any], concurrency: int, handle: Callable[[Any], Awaitable[None]]) -> None:
    """Call `handle(item)` for every item, `concurrency` at a time, in order of `items`.

    The first exception stops the pool: the other workers are cancelled and it is re-raised
    (not wrapped in an ExceptionGroup).
    """
    iterator = iter(items)

    async def worker() -> None:
        for item in iterator:
            await handle(item)

    tasks = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


CLAIM_POLL_S = 0.5


async def claimed_pool(
    items: Iterable[T],
    concurrency: int,
    claims: UnitClaims,
    unit: Callable[[T], str],
    is_done: Callable[[T], bool],
    handle: Callable[[T], Awaitable[None]],
    on_done_elsewhere: Callable[[T], None] | None = None,
    poll_s: float = CLAIM_POLL_S,
) -> int:
    """`worker_pool` for a run another process may be working on at the same time.

    Each item is claimed before `handle` runs and released after. An item another live process
    holds is skipped, and waited for once this process's own items are done: it is either done
    there (`is_done`: its result is stored; `on_done_elsewhere` is told) or taken over when its
    claim lapses. So two identical commands share the work and both end when all of it is
    done. Claims are renewed while the pool runs and dropped when it ends, however it ends.
    Returns how many items were done elsewhere.
    """
    elsewhere = 0

    async def renew() -> None:
        while True:
            await asyncio.sleep(claims.lease_s / 3)
            claims.renew()

    renewer = asyncio.create_task(renew())
    pending, waiting = list(items), []
    held: list[T] = []

    async def claimed(item: T) -> None:
        nonlocal elsewhere
        name = unit(item)
        if not claims.take(name):
            held.append(item)
            return
        try:
            if is_done(item):
                elsewhere += 1
                if on_done_elsewhere:
                    on_done_elsewhere(item)
                return
            await handle(item)
        finally:
            claims.release(name)

    try:
        while pending or waiting:
            if pending:
                held.clear()
                await worker_pool(pending, concurrency, claimed)
                waiting += held
            pending = []
            if waiting:
                await asyncio.sleep(poll_s)
                busy = claims.held_elsewhere()  # one read per poll, not a claim attempt per item
                pending = [i for i in waiting if unit(i) not in busy]
                waiting = [i for i in waiting if unit(i) in busy]
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
        claims.release_all()
    return elsewhere


def eval_row(cat: Catalog, ref: str, kind: str | None = None) -> dict[str, Any]:
    """The evals row for an id (or unique prefix); checks its kind when asked."""
    try:
        full = cat.resolve(ref)
    except CatalogError as exc:
        raise OpenchatError(str(exc)) from None
    if cat.table_of(full) != "evals":
        raise OpenchatError(f"'{ref}' is a {cat.table_of(full)[:-1]}, expected an eval run (ev-…)")
    row = cat.get(full)
    if kind and row["kind"] != kind:
        raise OpenchatError(f"{full} is a {row['kind']} run, expected an {kind} run")
    return row


def checkpoint_id(cat: Catalog, ref: str) -> str:
    """The checkpoint a `--checkpoint` id (or unique prefix) names; anything else is an error."""
    try:
        full = cat.resolve(ref)
    except CatalogError as exc:
        raise OpenchatError(str(exc)) from None
    if cat.table_of(full) != "checkpoints":
        raise OpenchatError(f"--checkpoint {ref} is not a checkpoint id")
    return full


def served_model(base_url: str, api_key: str | None, retries: int, retry_wait_s: float) -> str:
    """The first model an endpoint's /models lists (what runs use when --model is not given)."""
    from openchat_cli.eval.client import ChatClient

    async def first() -> list[str]:
        async with ChatClient(base_url, "", api_key=api_key, retries=retries, retry_wait_s=retry_wait_s) as client:
            return await client.list_models()

    models = run_guarded(first)
    if not models:
        raise OpenchatError(f"{base_url}/models lists no models; pass --model")
    return models[0]


def check_reachable(base_url: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before any run is registered, when nothing answers at the endpoint. Any HTTP
    reply counts as reachable (a proxy may not list /models, or may want a key there)."""
    import httpx

    try:
        httpx.get(f"{base_url}/models", timeout=timeout_s)
    except httpx.TransportError as exc:
        raise OpenchatError(
            f"the endpoint {base_url} could not be reached ({type(exc).__name__}: {exc or 'no reply'}); "
            "start the server or fix --endpoint"
        ) from None


def discover_checkpoint(cat: Catalog, base_url: str) -> str | None:
    """The catalog checkpoint an `openchat serve` endpoint serves, from its /health (best effort)."""
    import httpx

    root = base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url
    try:
        response = httpx.get(root + "/health", timeout=2.0)
        found = response.json().get("checkpoint_id") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if not isinstance(found, str) or not looks_like_id(found):
        return None
    try:
        full = cat.resolve(found)
    except CatalogError:
        return None
    return full if cat.table_of(full) == "checkpoints" else None


def lineage_checkpoint(cat: Catalog, given: str | None, model: str, base_url: str) -> str | None:
    """The checkpoint a run's answers come from: --checkpoint, else a served model named by its
    checkpoint id, else what the endpoint's /health says (best effort)."""
    if given:
        return checkpoint_id(cat, given)
    if not (looks_like_id(model) and model.startswith("ck-")):
        return discover_checkpoint(cat, base_url)
    try:
        full = cat.resolve(model)
    except CatalogError:
        return None
    return full if cat.table_of(full) == "checkpoints" else None


def find_or_start_run(
    cat: Catalog, find: Callable[[], dict | None], new: bool, **fields: Any
) -> tuple[dict[str, Any], bool]:
    """(run row, made now): a fresh run with `new`, else the one `find` returns, else a new one.
    Found and made in one write transaction: of two identical commands started together, the
    second joins the run the first made."""
    if new:
        return cat.get(cat.add_eval(**fields)), True
    return cat.find_or_add_eval(find, **fields)


def start_event(run_id: str, resumed: bool, total: int, todo: int, **extra: Any) -> dict[str, Any]:
    """The `start` event of a run's pass: how much the run holds and how much is left to do."""
    return {"run_id": run_id, "resumed": resumed, "total": total, "already": total - todo, "todo": todo, **extra}


def guarded_pass(
    cat: Catalog,
    run_id: str,
    go: Callable[[], Awaitable[Any]],
    metrics: Callable[[], dict[str, Any]],
    kept: Callable[[], str],
    complete: Callable[[dict[str, Any]], bool] = lambda metrics: True,
) -> tuple[str, dict[str, Any]]:
    """Run a pass over a run's missing units (`run_guarded`) and record how it ended: (status, metrics).
    When it stops early the run is marked interrupted or failed with the metrics so far, and an
    endpoint failure's message says what the run keeps (`kept()`: "Run ev-… keeps the 3/10 answers
    received") and how to continue. After the pass the run is completed if `complete(metrics)`."""
    from openchat_cli.eval.client import EndpointError

    try:
        run_guarded(go)
    except Interrupted:
        finish(cat, run_id, "interrupted", metrics())
        raise
    except EndpointError as exc:
        finish(cat, run_id, "failed", metrics())
        raise EndpointError(f"{exc.message}. {kept()}; re-run the same command to continue.") from None
    except BaseException:
        finish(cat, run_id, "failed", metrics())
        raise
    final = metrics()
    status = "completed" if complete(final) else "failed"
    finish(cat, run_id, status, final)
    return status, final


def finish(cat: Catalog, run_id: str, status: str, metrics: dict[str, Any] | None = None) -> None:
    fields: dict[str, Any] = {"status": status}
    if metrics is not None:
        fields["metrics"] = metrics
    if status != "running":
        fields["finished_at"] = now()
    cat.update("evals", run_id, **fields)
