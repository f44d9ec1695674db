"""The provider as a person sees it: Airflow 3's web UI in a real Chromium, against ``airflow standalone``.

One deployment serves the pytest session (``standalone.py``: PostgreSQL, scheduler, triggerer, API server,
the emulator on loopback as fal). Debian's ``/usr/bin/chromium`` is driven by Playwright's Python package
(its bundled driver only; no browser is downloaded: ``scripts/install-browser`` installs Chromium).

The tests read what is on the page (text and links in the DOM) and save screenshots under
``test-artifacts/browser/`` (gitignored; the paths are printed):

* the "add connection" form with the FLUX Redux type chosen shows our labels, placeholders and extra fields;
* after a run of ``example_flux_redux``, the task's Details tab shows both extra links (the gallery tab and
  the first image), its Logs tab shows the submit line with the queue position, the status changes and
  fal's own log lines (``fal: ...``) and no error line, and its XCom tab shows the result;
* the gallery tab of that task shows the input and output images (each decoded by the browser: natural
  width > 0) and the request's timeline; the gallery tab of a mapped run shows every task's images in one
  contact sheet, the failed task with its error type, and the run's cost;
* the gallery answers 401 without a token and 403 to a user without access to the DAG (a second API
  server of the same deployment with the simple auth manager's login on, not all-admins).

The gallery screenshots are also written, as the README's copies, to ``docs/screenshots/`` when
``FLUX_REDUX_REFRESH_SCREENSHOTS=1`` (``scripts/refresh-screenshots``), else to ``test-artifacts/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from airflow_flux_redux.gallery import RUN_ROUTE, TASK_ROUTE, URL_PREFIX
from tests.conftest import API_KEY
from tests.e2e.standalone import VENV_BIN, Session, free_port, timed, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("FLUX_REDUX_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("FLUX_REDUX_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "browser"
# The README's copies are refreshed only when asked (scripts/refresh-screenshots); a plain test run leaves
# git status clean and puts them with the other artifacts.
DOCS_SCREENSHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("FLUX_REDUX_REFRESH_SCREENSHOTS") == "1"
    else ROOT / "test-artifacts" / "docs-screenshots"
)
DAG_ID, TASK_ID = "example_flux_redux", "vary_image"
MAPPED_DAG_ID, MAPPED_TASK_ID = "e2e_flux_redux_mapped", "vary_many"
# As root in a container, with no network but loopback: no sandbox, no GPU, nothing phoning home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
UI_TIMEOUT_MS = 45_000  # two cores shared with scheduler, triggerer, API server and workers


def _require_browser() -> Any:
    """Playwright's sync API and a Chromium to drive; skip (locally) or fail (in CI) if either is missing."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is not installed (run scripts/install-browser)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("the Python package playwright is not installed (pip install -e '.[test]')")
    if missing:
        reason = "browser test needs Chromium and Playwright: " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + " -- CI must install both", pytrace=False)
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def browser_context() -> Iterator[Any]:
    """One headless Chromium (Debian's) with a fresh profile folder for this module."""
    sync_playwright = _require_browser()
    from playwright.sync_api import expect

    profile = tempfile.mkdtemp(prefix="flux-redux-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 860},
                device_scale_factor=1,
                timezone_id="UTC",
                locale="en-US",
            )
            context.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(browser_context: Any, airflow_session: Session) -> Iterator[Any]:
    """A new tab of the module's browser."""
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield page
    finally:
        if errors:
            print(f"\nJavaScript errors on the page: {errors}")
        page.close()


@contextlib.contextmanager
def shot_on_failure(page: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    """If the block fails, save a screenshot of wherever the page was, for the artifacts."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            shot(page, f"{request.node.name}-FAILED", request, full_page=True)
        raise


def announce(request: pytest.FixtureRequest, path: Path) -> Path:
    """Print an artifact's path on the terminal, also when pytest captures output."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        print(f"\n[browser screenshot] {path}")
    return path


def shot(target: Any, name: str, request: pytest.FixtureRequest, **options: Any) -> Path:
    """Screenshot a page or one element of it to test-artifacts/browser/NAME.png; print the path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    target.screenshot(path=str(path), animations="disabled", **options)
    return announce(request, path)


def expect_text(locator: Any, *needles: str, timeout: float = UI_TIMEOUT_MS / 1000) -> str:
    """Wait until the locator's visible text contains every needle; return that text."""
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        with contextlib.suppress(Exception):
            text = locator.inner_text(timeout=2_000)
        missing = [needle for needle in needles if needle not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"not on the page: {missing}\n--- visible text ---\n{text[-4000:]}")
        time.sleep(0.25)


# -- the connection form --------------------------------------------------------------------------------------

# What a user must find in the form whatever the wording of the help texts (issue 6, item 1).
FORM_LABELS = ("Base URL", "API key", "Auth scheme", "Model endpoint", "Allowed hosts", "Queue priority")


def flux_redux_connection_type() -> dict[str, Any]:
    """Our entry of the provider info, as the UI gets it through the entry point."""
    from airflow_flux_redux.get_provider_info import get_provider_info

    (spec,) = [c for c in get_provider_info()["connection-types"] if c["connection-type"] == "flux_redux"]
    return spec


def test_connection_form_shows_flux_redux_fields(
    page: Any, airflow_session: Session, request: pytest.FixtureRequest
) -> None:
    from playwright.sync_api import expect

    with timed(airflow_session, request.node.name), shot_on_failure(page, request):
        page.set_viewport_size({"width": 1280, "height": 1400})
        page.goto(f"{airflow_session.deployment.url}/connections")
        page.get_by_role("button", name="Add Connection").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading", name="Add Connection")).to_be_visible()

        # The type list is searchable: our type is there under the provider's hook name.
        spec = flux_redux_connection_type()
        connection_type = dialog.get_by_role("combobox", name="Connection Type")
        connection_type.fill("FLUX")
        option = page.get_by_role("option", name=spec["hook-name"], exact=True)
        expect(option).to_be_visible()
        option.click()
        expect(dialog.get_by_text(spec["hook-name"], exact=True)).to_be_visible()

        # Standard fields, relabelled, with placeholders that say what to type; the key is a secret field.
        behaviour = spec["ui-field-behaviour"]
        for field, label in behaviour["relabeling"].items():
            placeholder = behaviour["placeholders"][field]
            box = dialog.locator(f"input[placeholder={json.dumps(placeholder)}]")
            expect(box).to_be_visible()
            expect(box).to_have_accessible_name(label)
        expect(dialog.get_by_label("API key", exact=True)).to_have_attribute("type", "password")
        standard = expect_text(dialog, *FORM_LABELS[:2], *behaviour["relabeling"].values())
        for hidden in behaviour["hidden-fields"]:  # schema, login, port: hidden
            assert not re.search(rf"^{hidden}$", standard, re.MULTILINE | re.IGNORECASE), standard
        shot(page, "connection-form-standard", request)
        standard_shot = shot(dialog, "connection-dialog-standard", request)

        # The extra fields from conn-fields: every label and description, and the defaults filled in.
        dialog.get_by_role("button", name="Extra Fields", exact=True).click()
        fields = spec["conn-fields"]
        expect_text(
            dialog,
            *FORM_LABELS[2:],
            *(field["label"] for field in fields.values()),
            *(field["description"] for field in fields.values()),
        )
        # Airflow's form names each input element_<field> (its labels are not tied to the inputs); a select
        # keeps its value in a hidden input and shows it in the element with id element_<field>.
        for name, field in fields.items():
            default = field["schema"].get("default")
            if default is None:
                continue
            box = dialog.locator(f"input[name='element_{name}']")
            if isinstance(default, bool):  # a checkbox
                expect(box).to_be_checked(checked=default)
                continue
            # A number field shows 30.0 as "30".
            shown = str(int(default)) if isinstance(default, float) and default.is_integer() else str(default)
            expect(box).to_have_value(shown)
            if "enum" in field["schema"]:
                expect(dialog.locator(f"div#element_{name}")).to_contain_text(str(default))
        shot(page, "connection-form-extra", request)
        extra_shot = shot(dialog, "connection-dialog-extra", request)
        announce(request, side_by_side(standard_shot, extra_shot, ARTIFACTS / "connection-form.png"))

        # Nothing was saved: the form was only looked at.
        page.keyboard.press("Escape")


# -- the task: extra links, progress in the log, XCom ---------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(airflow_session: Session) -> dict[str, Any]:
    """One run of example_flux_redux whose job sits in fal's queue for a while, so the log shows it.

    The job takes 7 s so the trigger fires well after the deferring worker process has exited: on
    Airflow 3.3 that process lingers about 5 s after ``defer()``, and a trigger event that lands while
    the scheduler has not yet processed the executor's event for that exit can get the resumed task
    failed ("finished with state success, but the task instance's state attribute is queued"). A fast
    job (under ~4 s) or a slow one (over ~6 s) stays clear of that window.
    """
    deployment = airflow_session.deployment
    airflow_session.reset_emulator(queue_seconds=3.0, run_seconds=4.0, log_lines=4)
    try:
        run_id = deployment.trigger(DAG_ID)
        deployment.wait_task(DAG_ID, run_id, TASK_ID, ["success"], timeout=120)
        deployment.wait_run(DAG_ID, run_id, ["success"], timeout=60)
    finally:
        airflow_session.emulator.configure(queue_seconds=0.5, run_seconds=1.5, log_lines=3)  # keep the result files
    xcom = {
        key: deployment.xcom(DAG_ID, run_id, TASK_ID, key) for key in ("status_url", "first_image_url", "request_id")
    }
    return {"run_id": run_id, **xcom}


def test_task_page_shows_extra_links_and_progress_log(
    page: Any, airflow_session: Session, finished_run: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    from playwright.sync_api import expect

    with timed(airflow_session, request.node.name), shot_on_failure(page, request):
        run_id, request_id = finished_run["run_id"], finished_run["request_id"]
        task_url = f"{airflow_session.deployment.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{TASK_ID}"

        # Details tab: the two extra links, pointing where the operator said.
        page.goto(f"{task_url}/details")
        header = page.get_by_test_id("header-card")
        expect_text(header, TASK_ID, "Success", "FluxReduxOperator")
        expect(page.get_by_text("Extra Links", exact=True)).to_be_visible()
        gallery_link = page.get_by_role("link", name="FLUX Redux gallery", exact=True)
        image_link = page.get_by_role("link", name="FLUX Redux image", exact=True)
        expect(gallery_link).to_be_visible()
        expect(image_link).to_be_visible()
        # The gallery link opens the task's gallery tab in this UI (no JSON status URL that answers 401).
        expect(gallery_link).to_have_attribute("href", re.compile(rf"/tasks/{TASK_ID}/plugin/{TASK_ROUTE}$"))
        expect(image_link).to_have_attribute("href", finished_run["first_image_url"])
        assert request_id in finished_run["first_image_url"]
        # The image link leads to a real image (the emulator's result file, reachable from the browser).
        image = page.request.get(finished_run["first_image_url"])
        assert image.ok and image.headers["content-type"].startswith("image/png"), image.status
        links_shot = shot(page, "task-details-extra-links", request)
        links_box = page.get_by_text("Extra Links", exact=True).locator("..").bounding_box()
        divider = page.get_by_role("button", name="Collapse Details Panel").bounding_box()

        # Logs tab (the task page's default): submit with queue position, the queue, fal's lines, the result.
        page.goto(task_url)
        log = page.get_by_test_id("virtualized-list")
        text = expect_text(
            log,
            f"Submitted fal request {request_id} (queue position",
            f"fal request {request_id} is IN_QUEUE, queue position",
            f"fal request {request_id} is IN_PROGRESS",
            "fal: ",
            f"fal request {request_id} is COMPLETED",
            "2 image(s) saved under",
        )
        # fal's lines ride in the state changes' records, one text line each.
        fal_lines = [line for line in text.splitlines() if "fal: " in line]
        assert len(fal_lines) >= 2, f"expected fal's own log lines in the task log, saw {fal_lines}\n{text}"
        assert API_KEY not in text
        # A run that went well logs no error: not even the extra links' "XCom not found" at the deferral.
        entries = airflow_session.deployment.task_log(DAG_ID, run_id, TASK_ID)
        errors = [e for e in entries if isinstance(e, dict) and str(e.get("level", "")).lower() == "error"]
        assert not errors, errors
        log_shot = shot(page, "task-log-progress", request)
        log_box = log.bounding_box()
        tabs_box = page.get_by_role("link", name="Logs", exact=True).bounding_box()

        # XCom tab: the result and the URLs behind the links are readable in the UI.
        page.goto(f"{task_url}/xcom")
        xcom_table = page.get_by_role("table")
        expect_text(xcom_table, "return_value", "status_url", "first_image_url", finished_run["status_url"])
        shot(page, "task-xcom", request)

        if links_box and tabs_box and log_box:
            bottom = links_box["y"] + links_box["height"] + 6
            panel_left = int(divider["x"] + divider["width"] / 2) - 2 if divider else int(tabs_box["x"]) - 24
            combined = stack_crops(
                ARTIFACTS / "task-links-and-log.png",
                (links_shot, (0, 0, None, bottom)),
                (log_shot, (panel_left, tabs_box["y"] - 12, None, log_box["y"] + log_box["height"] + 16)),
            )
            announce(request, combined)


# -- the gallery: the task's tab, the run's contact sheet, access control ------------------------------------

GALLERY_TIMEOUT_S = 60


def loaded_images(frame: Any, selector: str) -> list[int]:
    """The natural widths of the images matching ``selector`` once the browser has finished each (0: broken)."""
    locator = frame.locator(selector)
    deadline = time.monotonic() + GALLERY_TIMEOUT_S
    while True:
        widths = locator.evaluate_all("els => els.map(e => (e.complete ? e.naturalWidth : -1))")
        if (widths and all(width >= 0 for width in widths)) or time.monotonic() > deadline:
            return [max(width, 0) for width in widths]
        time.sleep(0.25)


def to_docs(path: Path, name: str) -> Path:
    """A README copy of a screenshot (palette PNG, small) under docs/screenshots/."""
    from PIL import Image

    DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        return _save_small(image, DOCS_SCREENSHOTS / name)


def test_task_gallery_tab_shows_images_timeline_and_cost(
    page: Any, airflow_session: Session, finished_run: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    from playwright.sync_api import expect

    with timed(airflow_session, request.node.name), shot_on_failure(page, request):
        deployment, run_id = airflow_session.deployment, finished_run["run_id"]
        page.set_viewport_size({"width": 1280, "height": 1100})
        page.goto(f"{deployment.url}/dags/{DAG_ID}/runs/{run_id}/tasks/{TASK_ID}")
        # The tab is there on the task instance page, under the name the plugin gave it; it opens the view.
        tab = page.get_by_role("tab", name="FLUX Redux", exact=True)
        tab.or_(page.get_by_role("link", name="FLUX Redux", exact=True)).first.click()
        expect(page).to_have_url(re.compile(rf"/plugin/{TASK_ROUTE}$"))
        frame = page.frame_locator("iframe[title='FLUX Redux']")
        body = frame.locator("body")
        result = deployment.xcom(DAG_ID, run_id, TASK_ID)
        expect_text(body, finished_run["request_id"], "Timeline", "Outputs", str(result["seed"]))

        # Every picture is an image the browser decoded: two outputs (server-made thumbnails) and the input.
        assert loaded_images(frame, "img[data-role=thumbnail]") == [320, 320], "output thumbnails"
        assert loaded_images(frame, "img[data-role=input]")[0] > 0, "input image"
        expect_text(frame.locator("table[data-role=timeline]"), "completed")
        phases = frame.locator("table[data-role=timeline] tr td:first-child").all_inner_texts()
        assert phases == ["submitted", "in queue", "in progress", "completed"], phases
        durations = frame.locator("table[data-role=timeline] tr td:nth-child(3)").all_inner_texts()
        assert all(text.endswith(" s") for text in durations[1:3]), durations
        facts = expect_text(body, "NSFW flags", "saved to", "megapixels", "fal billable units", "fal metrics")
        # The cost as recorded: megapixels made and fal's billable units (the emulator sends the header).
        cost = result["cost"]
        shown = [f"{value:,.3f}".rstrip("0").rstrip(".") for value in (cost["megapixels"], cost["billable_units"])]
        assert f"{shown[0]} megapixels; fal billable units: {shown[1]}" in facts, (cost, facts)
        for image in result["images"]:
            assert image["local_path"] in facts
        assert API_KEY not in page.content() and API_KEY not in frame.locator("html").inner_html()
        task_shot = shot(page, "gallery-task", request)

        # A thumbnail opens the full-size image (an overlay: the UI's iframe allows no new tabs).
        frame.locator("img[data-role=thumbnail]").first.click()
        full = frame.locator(".overlay:target img")
        expect(full).to_be_visible()
        assert loaded_images(frame, ".overlay:target img") == [result["images"][0]["width"]]
        announce(request, to_docs(task_shot, "gallery-task.png"))


@pytest.fixture(scope="module")
def mapped_run(airflow_session: Session) -> dict[str, Any]:
    """A run of the mapped DAG (one task per seed) where the fifth job fails at fal with a policy error.

    Jobs take 7 s, clear of Airflow 3.3's stale-defer-event race (see ``finished_run``).
    """
    deployment = airflow_session.deployment
    airflow_session.reset_emulator(queue_seconds=3.0, run_seconds=4.0)
    airflow_session.emulator.set_faults([{"kind": "fail_job", "after": 4, "times": 1}])
    run_id = deployment.trigger(MAPPED_DAG_ID)
    deployment.wait_run(MAPPED_DAG_ID, run_id, ["failed"], timeout=300)
    tis = [ti for ti in deployment.task_instances(MAPPED_DAG_ID, run_id) if ti["task_id"] == MAPPED_TASK_ID]
    return {"run_id": run_id, "states": {ti["map_index"]: ti["state"] for ti in tis}}


def test_run_gallery_is_a_contact_sheet_with_states_errors_and_cost(
    page: Any, airflow_session: Session, mapped_run: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    with timed(airflow_session, request.node.name), shot_on_failure(page, request):
        deployment, run_id = airflow_session.deployment, mapped_run["run_id"]
        mapped = airflow_session.mapped
        states = mapped_run["states"]
        assert sorted(states.values()) == ["failed"] + ["success"] * (mapped - 1), states
        page.set_viewport_size({"width": 1280, "height": 1300})
        started = time.monotonic()
        page.goto(f"{deployment.url}/dags/{MAPPED_DAG_ID}/runs/{run_id}/plugin/{RUN_ROUTE}")
        frame = page.frame_locator("iframe[title='FLUX Redux']")
        summary = expect_text(frame.locator("[data-role=summary]"), "1 failed", f"{mapped - 1} success")
        cards = frame.locator("[data-role=contact-sheet] .card")
        assert cards.count() == mapped
        widths = loaded_images(frame, "img[data-role=thumbnail]")
        opened = time.monotonic() - started
        assert len(widths) == mapped - 1 and all(width > 0 for width in widths), widths
        print(f"\nrun gallery: {mapped} cards, {len(widths)} thumbnails decoded in {opened:.1f} s (cold cache)")
        failed = frame.locator(".card.failed")
        assert failed.count() == 1
        expect_text(failed, "failed", "FluxReduxJobFailedError")
        # A deferral (and a failure) logs no extra-link "XCom not found" error; a task that went well, no error.
        deferred = 0
        for index, state in states.items():
            entries = deployment.task_log(MAPPED_DAG_ID, run_id, MAPPED_TASK_ID, map_index=index)
            text = json.dumps(entries, default=str)
            assert "XCom not found" not in text, text[-3000:]
            if state == "success" and "Pausing task as DEFERRED" in text:
                deferred += 1
                levels = {str(e.get("level", "")).lower() for e in entries if isinstance(e, dict)}
                assert "error" not in levels, text[-3000:]
        assert deferred > 0, "no mapped task deferred: the deferral case was not checked"
        # The run's cost is the sum of what each task recorded.
        results = [
            deployment.xcom(MAPPED_DAG_ID, run_id, MAPPED_TASK_ID, map_index=index)
            for index, state in states.items()
            if state == "success"
        ]
        megapixels = sum(result["cost"]["megapixels"] for result in results)
        html = frame.locator("[data-role=summary]").inner_html()
        assert f"<b>{mapped}</b>tasks" in html and f"<b>{mapped - 1}</b>images" in html, html
        assert f"{megapixels:,.3f}".rstrip("0").rstrip(".") in summary, (megapixels, summary)
        run_shot = shot(page, "gallery-run", request)
        announce(request, to_docs(run_shot, "gallery-run.png"))


@pytest.fixture(scope="module")
def login_api_server(airflow_session: Session, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A second API server of the same deployment with the simple auth manager's login on (not all-admins).

    Users: ``admin`` (role admin) and ``nobody`` (no role: the simple auth manager grants it nothing, so it
    is a user that may not read any DAG). Passwords are written beforehand; the server keeps them.
    """
    deployment = airflow_session.deployment
    folder = tmp_path_factory.mktemp("login-api")
    passwords = {"admin": "admin-pass", "nobody": "nobody-pass"}
    (folder / "passwords.json").write_text(json.dumps(passwords))
    port = free_port()
    env = {
        **deployment.env,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,nobody:",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(folder / "passwords.json"),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
    }
    log = (folder / "api-server.log").open("wb")
    process = subprocess.Popen(
        [str(VENV_BIN / "airflow"), "api-server", "--apps", "core", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        wait_for(
            "the login API server",
            lambda: process.poll() is None and httpx.get(f"{url}/api/v2/monitor/health", timeout=5).status_code == 200,
            120,
            1.0,
            lambda: (folder / "api-server.log").read_text(errors="replace")[-3000:],
        )

        def token(user: str) -> str:
            response = httpx.post(f"{url}/auth/token", json={"username": user, "password": passwords[user]})
            return str(response.raise_for_status().json()["access_token"])

        yield {"url": url, "token": token}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


def test_gallery_answers_401_without_a_token_and_403_without_access_to_the_dag(
    page: Any,
    browser_context: Any,
    airflow_session: Session,
    finished_run: dict[str, Any],
    login_api_server: dict[str, Any],
    request: pytest.FixtureRequest,
) -> None:
    with timed(airflow_session, request.node.name), shot_on_failure(page, request):
        url, token = login_api_server["url"], login_api_server["token"]
        task = f"{URL_PREFIX}/dags/{DAG_ID}/runs/{finished_run['run_id']}/tasks/{TASK_ID}"
        paths = [task, f"{task}/images/0?size=full", f"{task}/input", f"{URL_PREFIX}/dags/{DAG_ID}/runs/x"]

        # The browser with no session cookie: 401 on the page and on every image.
        browser_context.clear_cookies()
        for path in paths:
            response = page.goto(url + path)
            assert response is not None and response.status == 401, (path, response and response.status)

        # Signed in as a user that may not read the DAG: 403 everywhere, nothing of the task on the page.
        browser_context.add_cookies([{"name": "_token", "value": token("nobody"), "url": url}])
        for path in paths:
            response = page.goto(url + path)
            assert response is not None and response.status == 403, (path, response and response.status)
            assert finished_run["request_id"] not in page.content()

        # The same pages for a user who may: 200 (so the 401 and 403 above were about access, not the URL).
        browser_context.add_cookies([{"name": "_token", "value": token("admin"), "url": url}])
        response = page.goto(url + task)
        assert response is not None and response.status == 200
        expect_text(page.locator("body"), finished_run["request_id"])
        # Images are served by task and index only: an index the task did not record is a 404, never a file.
        response = page.goto(f"{url}{task}/images/7")
        assert response is not None and response.status == 404
        browser_context.clear_cookies()


# -- pictures for the README: real screenshots, cropped and put together ---------------------------------------


def _save_small(image: Any, path: Path) -> Path:
    """PNG with a 256-colour palette: UI screenshots stay sharp and well under 300 KB."""
    from PIL import Image

    image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def side_by_side(left: Path, right: Path, path: Path, gap: int = 20) -> Path:
    """Two element screenshots next to each other, tops aligned, on the grey of the page behind a dialog."""
    from PIL import Image

    with Image.open(left) as a, Image.open(right) as b:
        size = (a.width + b.width + 3 * gap, max(a.height, b.height) + 2 * gap)
        canvas = Image.new("RGB", size, (226, 232, 240))
        canvas.paste(a.convert("RGB"), (gap, gap))
        canvas.paste(b.convert("RGB"), (a.width + 2 * gap, gap))
        return _save_small(canvas, path)


def stack_crops(path: Path, *parts: tuple[Path, tuple[float, float, float | None, float]]) -> Path:
    """Stack crops (x0, y0, x1 or None for the right edge, y1) of screenshots of one width.

    Each crop keeps its x position; where a crop starts right of x=0, the left strip continues the
    first picture's bottom row (the empty sidebar and grid backgrounds), so nothing is drawn that no
    screenshot showed. A thin rule separates the parts.
    """
    from PIL import Image

    crops = []
    for source, (x0, y0, x1, y1) in parts:
        with Image.open(source) as image:
            image = image.convert("RGB")
            box = (int(x0), max(0, int(y0)), image.width if x1 is None else int(x1), min(image.height, int(y1)))
            crops.append((box[0], image.crop(box)))
    width = max(x + crop.width for x, crop in crops)
    rule = 2
    canvas = Image.new("RGB", (width, sum(c.height for _, c in crops) + rule * (len(crops) - 1)), "white")
    y = 0
    previous = None
    for x, crop in crops:
        if x > 0 and previous is not None:
            strip = previous.crop((0, previous.height - 1, x, previous.height)).resize((x, crop.height + rule))
            canvas.paste(strip, (0, y - rule))
        if previous is not None:
            canvas.paste(Image.new("RGB", (width - x, rule), (203, 213, 225)), (x, y - rule))
        canvas.paste(crop, (x, y))
        y += crop.height + rule
        previous = crop if x == 0 else previous
    return _save_small(canvas, path)
