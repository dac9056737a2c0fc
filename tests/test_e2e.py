"""The plugin in a real FiftyOne App: the panel's summary, then a headless Chromium that runs
the operators and opens the UnSeg panel against an App server started here.

Screenshots of each browser step go to ``tests/artifacts/e2e/`` (with the server's log).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import unquote

import fiftyone as fo
import pytest
import torch
from test_modeling import MICRO

from fiftyone_unseg import protect, sample_data, visualize_noise
from fiftyone_unseg.audit.report import ProtectionReport, VictimResult, record_run, write_report
from fiftyone_unseg.checkpoint import save_generator
from fiftyone_unseg.modeling import build_noise_generator
from fiftyone_unseg.settings import DEFAULT_CLASS_MIX
from fiftyone_unseg.summary import protection_summary, summary_markdown

ARTIFACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts", "e2e")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000  # generous: CI machines can be busy


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    """A randomly initialised MICRO generator checkpoint."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("generator") / "micro"
    save_generator(build_noise_generator(MICRO), MICRO, path)
    return str(path)


def _scenes(name: str, num: int = 8) -> fo.Dataset:
    return sample_data.create_sample_dataset(name, num=num, seed=3, size=128, overwrite=True)


def _record_audit(dataset, run_key: str, folder, clean: float, protected: float) -> None:
    """Record a protection report the way ``evaluate_protection`` does, without training."""
    result = VictimResult("yolo", "mask_mAP", scores={"clean": clean, "protected": protected})
    report = ProtectionReport(
        run_key=run_key,
        dataset=dataset.name,
        split="tags",
        num_train=6,
        num_test=2,
        protected_field="protected_filepath",
        countermeasure=None,
        baselines=(),
        results=[result],
        folder=str(folder),
    )
    write_report(report)
    record_run(dataset, report, {"label_field": "instances"})


def test_protection_summary_counts_settings_psnr_heatmaps_and_latest_audit(tmp_path, generator):
    dataset = _scenes("unseg-summary", num=6)
    empty = protection_summary(dataset)
    assert empty["num_samples"] == 6 and empty["num_protected"] == 0
    assert empty["settings"] == [] and empty["psnr"] is None and empty["audit"] is None

    ids = dataset.values("id")
    protect(dataset.select(ids[:4]), "instances", generator=generator)
    protect(dataset.select(ids[4:5]), "ground_truth", generator=generator, eps=4 / 255)
    visualize_noise(dataset.select(ids[:2]))
    _record_audit(dataset, "older_audit", tmp_path / "older", 0.5, 0.4)
    _record_audit(dataset, "newer_audit", tmp_path / "newer", 0.6, 0.1)

    summary = protection_summary(dataset)
    assert summary["num_samples"] == 6 and summary["num_protected"] == 5
    assert summary["num_replaced"] == 0 and summary["num_visualized"] == 2
    generator_id = dataset.first().unseg.generator_id
    assert summary["settings"] == [
        {
            "generator_id": generator_id,
            "eps": pytest.approx(8 / 255),
            "eps_bg": pytest.approx(2 / 255),
            "class_mix": DEFAULT_CLASS_MIX,
            "label_field": "instances",
            "prompt": "all",
            "format": "png",
            "count": 4,
        },
        {
            "generator_id": generator_id,
            "eps": pytest.approx(4 / 255),
            "eps_bg": pytest.approx(2 / 255),
            "class_mix": DEFAULT_CLASS_MIX,
            "label_field": "ground_truth",
            "prompt": "all",
            "format": "png",
            "count": 1,
        },
    ]
    psnr = [p for p in dataset.values("unseg.psnr") if p is not None]
    assert summary["psnr"]["min"] == pytest.approx(min(psnr))
    assert summary["psnr"]["max"] == pytest.approx(max(psnr))
    assert sum(summary["psnr"]["counts"]) == 5
    assert len(summary["psnr"]["edges"]) == len(summary["psnr"]["counts"]) + 1 == 3
    assert summary["linf_max"] <= 8 / 255 + 1e-6
    audit = summary["audit"]
    assert audit["run_key"] == "newer_audit"
    assert audit["rows"][0]["protected"] == pytest.approx(0.1)
    assert audit["rows"][0]["ratio"] == pytest.approx(0.1 / 0.6)
    assert "| yolo | mask_mAP |" in audit["table"] and os.path.isfile(audit["chart_path"])
    text = summary_markdown(summary)  # what `unseg status` prints
    assert text.index("| 4 |") < text.index("| 1 |")  # settings, most samples first
    assert "Latest audit `newer_audit`" in text and audit["table"] in text

    view = protection_summary(dataset.select(ids[3:]))
    assert view["num_samples"] == 3 and view["num_protected"] == 2
    assert [s["count"] for s in view["settings"]] == [1, 1]

    protect(dataset.select(ids[5:]), "instances", generator=generator, replace_filepath=True)
    assert protection_summary(dataset)["num_replaced"] == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def artifacts() -> str:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    os.makedirs(ARTIFACTS)
    print(f"\nE2E screenshots and server log: {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture(scope="module")
def app_url(artifacts):
    """A FiftyOne App server on a free localhost port, on the tests' database and plugins.

    The test process connects first, so the server shares its ``mongod`` (FiftyOne passes
    the port on in ``FIFTYONE_PRIVATE_DATABASE_PORT``, or the server inherits
    ``FIFTYONE_DATABASE_URI``) instead of owning one.
    """
    fo.list_datasets()
    assert fo.config.database_uri or "FIFTYONE_PRIVATE_DATABASE_PORT" in os.environ
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(os.path.join(artifacts, "server.log"), "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "fiftyone.server.main", "--address", "127.0.0.1"]
            + ["--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                if server.poll() is not None:
                    pytest.fail(f"the App server exited ({server.returncode}); see {log.name}")
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"the App server did not answer in 180 s; see {log.name}")
                    time.sleep(0.5)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium driven by Playwright (Playwright cannot download one here)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the browser test needs Debian's Chromium "
            "(`make install` as root, or `apt-get install chromium chromium-driver`)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        _shot(page, "last")
        context.close()


def _shot(page, name: str) -> None:
    page.screenshot(path=os.path.join(ARTIFACTS, f"{name}.png"))


def _execute(page, done_text: str) -> None:
    """Execute the open operator form and wait for its result."""
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("button", name="Execute").click()
    dialog.get_by_text(done_text).wait_for()


def test_app_runs_operators_and_shows_the_panel(app_url, page, generator, tmp_path):
    dataset = _scenes("unseg-e2e")
    page.goto(f"{app_url}/datasets/{dataset.name}")
    page.locator('[data-cy="looker"]').first.wait_for()
    assert page.locator('[data-cy="checkbox-instances"]').is_visible()
    dismiss = page.get_by_text("Dismiss", exact=True)  # FiftyOne's Enterprise pop-up
    if dismiss.is_visible():
        dismiss.click()
    _shot(page, "01-dataset")

    # The operator browser lists the UnSeg operators.
    page.keyboard.press("`")
    page.locator('[data-cy="operators-browser-search"]').fill("UnSeg")
    browser_list = page.locator('[data-cy="operators-browser"]')
    for label in (
        "protect samples",
        "visualize noise",
        "restore originals",
        "export protected copy",
        "evaluate protection",
    ):
        browser_list.get_by_text(f"UnSeg: {label}", exact=True).wait_for()
    _shot(page, "02-operator-browser")

    # protect_samples through its form, on the instances field.
    browser_list.get_by_text("UnSeg: protect samples", exact=True).click()
    form = page.get_by_role("dialog")
    form.get_by_role("combobox").click()
    page.get_by_role("option", name="instances", exact=True).click()
    text_inputs = form.locator('input[type="string"]')
    deadline = time.monotonic() + 30  # the form drops the Segmentation-only inputs on re-render
    while text_inputs.count() != 3 and time.monotonic() < deadline:
        page.wait_for_timeout(200)
    generator_field, output_field, device_field = text_inputs.all()  # the preset first
    assert output_field.input_value() == ""  # the default output folder
    generator_field.fill(generator)
    assert device_field.input_value() == "cpu"
    _shot(page, "03-protect-form")
    _execute(page, "Protected images in")
    _shot(page, "04-protect-done")
    page.get_by_role("button", name="Close").click()

    dataset.reload()
    protected = dataset.values("protected_filepath")
    assert len(protected) == 8 and all(p and os.path.isfile(p) for p in protected)
    assert dataset.distinct("unseg.label_field") == ["instances"]
    generator_id = dataset.first().unseg.generator_id

    # The App shows the protected images: the grid loads them as its media field.
    page.locator('[data-cy="checkbox-protected_filepath"]').wait_for()
    page.locator('[data-cy="action-display-options"]').click()
    with page.context.expect_event(
        "request", lambda r: "/unseg-protected/" in unquote(r.url), timeout=TIMEOUT_MS
    ):
        page.get_by_text("protected_filepath", exact=True).last.click()
    page.locator('[data-cy="action-display-options"]').click()
    page.wait_for_timeout(1000)  # let the grid paint
    _shot(page, "05-grid-protected")

    # The UnSeg panel shows the new state.
    page.locator('[data-cy="new-panel-btn"]').click()
    page.get_by_text("UnSeg", exact=True).click()
    page.get_by_text("8 of 8").wait_for()
    panel = page.locator("div").filter(has_text="samples protected").filter(has_text="Refresh").last
    panel.get_by_text(generator_id).wait_for()
    assert panel.get_by_text("0 with noise heatmaps").is_visible()
    assert panel.get_by_text("none yet").is_visible()
    _shot(page, "06-panel")

    # visualize_noise from the panel's button; the panel refreshes when it finished.
    panel.get_by_role("button", name="Noise").click()
    _execute(page, "Visualized")
    page.get_by_role("button", name="Close").click()
    panel.get_by_text("8 with noise heatmaps").wait_for()
    page.locator('[data-cy="checkbox-unseg_noise"]').wait_for()
    dataset.reload()
    assert dataset.count("unseg_noise") == 8
    page.locator('[data-cy="checkbox-unseg_noise"]').click()
    page.wait_for_timeout(1000)
    _shot(page, "07-noise-heatmaps")

    # export_protected from the panel's button: COCO of the field protection used.
    panel.get_by_role("button", name="Export").click()
    export_dir = tmp_path / "published"
    page.get_by_role("dialog").locator('input[type="string"]').fill(str(export_dir))
    _shot(page, "08-export-form")
    _execute(page, "Unprotected, left out")  # a label of the result, not of the form
    page.get_by_role("dialog").get_by_text(str(export_dir), exact=True).wait_for()
    page.get_by_role("button", name="Close").click()
    names = sorted(os.path.basename(p) for p in dataset.values("filepath"))
    assert sorted(os.listdir(export_dir / "data")) == [n.rsplit(".", 1)[0] + ".png" for n in names]
    assert (export_dir / "labels.json").is_file()

    # A recorded audit appears in the panel with its table and chart.
    _record_audit(dataset, "e2e_audit", tmp_path / "audit", 0.62, 0.08)
    panel.get_by_role("button", name="Refresh").click()
    panel.get_by_text("e2e_audit").wait_for()
    panel.get_by_text("mask_mAP").wait_for()
    assert panel.locator('img[src^="data:image/png;base64,"]').count() == 1
    _shot(page, "09-panel-audit")
