"""Progress reporting from SDK callbacks to the App, and which runs may be immediate.

An immediate run shows no progress, and the App stops waiting for it after
``fo.config.operator_timeout`` seconds (600) while the work goes on. So immediate
execution is offered only for work that ends well within that; anything larger runs
delegated, where the App's runs page shows its progress.
"""

from fiftyone.operators.executor import ExecutionOptions

IMMEDIATE_SAMPLES = 200  # images an immediate protect, visualize or export may write
IMMEDIATE_EPOCHS = 1  # an audit's victims train this long at most in an immediate run
IMMEDIATE_TRAININGS = 8  # and this many times (victims x variants x seeds)
IMMEDIATE_STEPS = 20  # an adaptation's training steps in an immediate run
IMMEDIATE_SCENES = 500  # sample scenes of 512 px (about 0.2 s each) in an immediate run


def app_progress(ctx, label: str):
    """A ``progress(done, total)`` callback that reports to the App's operation list.

    Delegated runs report through ``ctx.set_progress``; immediate runs are small (see
    :func:`execution_options`) and report only their result.
    """

    def update(done: int, total: int) -> None:
        if ctx.delegated:
            ctx.set_progress(progress=done / max(total, 1), label=f"{label} {done}/{total}")

    return update


def execution_options(operator, immediate: bool) -> ExecutionOptions:
    """``operator``'s configured execution options, less immediate execution (and
    delegated by default) unless ``immediate``: the run is small enough to finish within
    the operator timeout."""
    config = operator.config
    return ExecutionOptions(
        allow_immediate_execution=config.allow_immediate_execution and immediate,
        allow_delegated_execution=config.allow_delegated_execution,
        default_choice_to_delegated=config.default_choice_to_delegated or not immediate,
    )


def target_size(ctx) -> int:
    """How many samples the operator's target view holds (0 without a dataset)."""
    return 0 if ctx.dataset is None else len(ctx.target_view())
