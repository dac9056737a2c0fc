"""Progress reporting from SDK callbacks to the App."""


def app_progress(ctx, label: str):
    """A ``progress(done, total)`` callback that reports to the App's operation list.

    Delegated runs report through ``ctx.set_progress``; immediate runs finish
    within the operator timeout and report only their result.
    """

    def update(done: int, total: int) -> None:
        if ctx.delegated:
            ctx.set_progress(progress=done / max(total, 1), label=f"{label} {done}/{total}")

    return update
