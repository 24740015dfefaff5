"""The MLflow UI as a person sees it: a finished three-cut sweep, served by `mlflow server`, in headless Chromium.

Uses Debian's `chromium` and `chromium-driver` through Selenium; nothing is downloaded. Without them (or
without selenium) the test is skipped with the reason. Screenshots go to the test's folder and, when
TLSWEEP_SCREENSHOTS names a folder (relative to the repository root, e.g. `docs/img`), there too:

    TLSWEEP_SCREENSHOTS=docs/img .venv/bin/python -m pytest tests/test_ui.py
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tlsweep.tracking.names import Kind, Tag

pytestmark = [pytest.mark.server, pytest.mark.ui]

LAYERS = ("block3_pool", "block4_pool", "block5_pool")
PARENT_NAME = f"vgg16 cifar10 layer={','.join(LAYERS)}"  # named after its data and what its sweep varies
WAIT_S = 60  # the React app renders after its API calls return; every wait is explicit
# What the README tells a person to add under Columns; the UI keeps it per experiment in localStorage.
COLUMNS = ["params.`layer`", "metrics.`train_accuracy`", "metrics.`val_accuracy`", "metrics.`test_accuracy`"]


def _browser() -> tuple[str, str]:
    """Paths of the system Chromium and its driver, or a skip saying what to install."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("no headless browser: apt-get install chromium chromium-driver (found "
                    f"browser={browser}, chromedriver={driver})")
    return browser, driver


@contextlib.contextmanager
def headless_chromium(browser: str, driver: str, profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser  # with both paths given, Selenium Manager looks nothing up
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1440,900", f"--user-data-dir={profile}"):
        options.add_argument(argument)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    try:
        chrome.set_page_load_timeout(WAIT_S)
        yield chrome
    finally:
        chrome.quit()


def _viewport(chrome, width: int, height: int) -> None:
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})


def _screenshot(chrome, name: str, folders: list[Path]) -> None:
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        assert chrome.save_screenshot(str(folder / name)), f"no screenshot written to {folder / name}"


def test_ui_shows_the_sweep_its_nested_children_and_the_comparison_plot(isolated, cifar_dir, cli, tiny, free_port,
                                                                        project_root, experiment_runs, mlflow_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver = _browser()
    shots = [isolated / "screenshots"]
    if os.environ.get("TLSWEEP_SCREENSHOTS"):
        shots.append(project_root / os.environ["TLSWEEP_SCREENSHOTS"])

    # the store a person has after the seed study's sweep (offline: tiny CIFAR-10 files, random-init VGG16)
    done = cli("-m", f"layer={','.join(LAYERS)}", f"data.path={cifar_dir}", *tiny, cwd=isolated)
    assert done.returncode == 0, done.stderr[-3000:]
    store = os.environ["MLFLOW_TRACKING_URI"]
    client = MlflowClient(store)
    runs = experiment_runs(client)
    (parent,) = [r for r in runs if r.data.tags.get(Tag.KIND) == Kind.SWEEP]
    children = [r for r in runs if r.data.tags.get(Tag.PARENT) == parent.info.run_id]
    assert parent.info.run_name == PARENT_NAME and len(children) == 3
    (plot,) = [a.path for a in client.list_artifacts(parent.info.run_id, "summary")
               if Path(a.path).name.startswith("accuracy_vs_layer-") and a.path.endswith(".png")]
    with Image.open(client.download_artifacts(parent.info.run_id, plot, str(isolated))) as image:
        plot_size = list(image.size)
    experiment, run_id = parent.info.experiment_id, parent.info.run_id

    folder = isolated / "ui"
    folder.mkdir()
    with mlflow_server(folder, free_port(), store) as url, headless_chromium(browser, driver, folder / "profile") as chrome:
        wait = WebDriverWait(chrome, WAIT_S)
        chrome.get(f"{url}/health")  # same origin, so the UI's saved state can be set before it loads
        chrome.execute_script(
            "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"  # the assistant would cover a third
            "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
            "localStorage.setItem(arguments[0], arguments[1]);",
            f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState',
            json.dumps({"selectedColumns": COLUMNS}))

        # The experiment runs page with no workflowType parameter: tlsweep tags its experiment as model
        # training (mlflow.experimentKind), and the page lists the training runs.
        _viewport(chrome, 1440, 430)
        chrome.get(f"{url}/#/experiments/{experiment}/runs")
        link = wait.until(EC.visibility_of_element_located(
            (By.XPATH, f"//div[@role='row']//a[normalize-space(.)='{PARENT_NAME}']")))
        assert link.get_attribute("href").endswith(f"#/experiments/{experiment}/runs/{run_id}")
        children_xpath = "//div[@role='row']//a[starts-with(normalize-space(.), 'vgg16/block')]"
        assert not chrome.find_elements(By.XPATH, children_xpath), "children listed before their parent is expanded"

        parent_row = link.find_element(By.XPATH, "./ancestor::div[@role='row']")
        expander = parent_row.find_element(By.XPATH, ".//div[@col-id='attributes.`Run Name`']//button")
        expander.click()
        child_links = wait.until(lambda page: (lambda found: found if len(found) == 3 else False)(
            [a for a in page.find_elements(By.XPATH, children_xpath) if a.is_displayed()]))
        assert sorted(a.text for a in child_links) == sorted(c.info.run_name for c in children)
        for child in child_links:  # each right below the parent, and indented under it
            row = child.find_element(By.XPATH, "./ancestor::div[@role='row']")
            assert int(row.get_attribute("row-index")) in (1, 2, 3)
            assert child.location["x"] > link.location["x"]
        # the columns the README tells a person to add
        for column in ("layer", "val_accuracy", "test_accuracy"):
            wait.until(EC.visibility_of_element_located(
                (By.XPATH, f"//div[@role='columnheader']//*[normalize-space(text())='{column}']")))
        _widen_run_names(chrome, wait)
        _screenshot(chrome, "experiment-runs.png", shots)
        # each child's datasets (train, val and test) and logged models fill the Dataset and Models columns
        chrome.execute_script("localStorage.setItem(arguments[0], arguments[1]);",
                              f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment}"]-ReactComponentState',
                              json.dumps({"selectedColumns": ["attributes.`Dataset`", "attributes.`Models`"]}))
        chrome.refresh()
        link = wait.until(EC.visibility_of_element_located(
            (By.XPATH, f"//div[@role='row']//a[normalize-space(.)='{PARENT_NAME}']")))
        link.find_element(By.XPATH, "./ancestor::div[@role='row']").find_element(
            By.XPATH, ".//div[@col-id='attributes.`Run Name`']//button").click()
        for text in ("cifar10 train", "probe"):
            wait.until(EC.visibility_of_element_located(
                (By.XPATH, f"//div[@role='row']//*[contains(normalize-space(text()), '{text}')]")))

        # The parent's artifacts: open summary/, then the comparison plot, as a person clicks them.
        _viewport(chrome, 1440, 720)
        chrome.get(f"{url}/#/experiments/{experiment}/runs/{run_id}/artifacts?workflowType=machine_learning")
        node = "[data-testid='artifact-tree-node'][artifact-name='{}']"
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, node.format("summary")))).click()
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, node.format(Path(plot).name)))).click()
        image = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, f"img[alt='{plot}']")))
        wait.until(lambda _: chrome.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image))
        assert chrome.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image) \
            == plot_size, "the preview is not the logged plot"
        assert image.size["height"] > 100, "the plot is in the page but not rendered at a visible size"
        chrome.execute_script("document.querySelectorAll('.mlflow-artifact-view ul')"
                              ".forEach(tree => { tree.scrollLeft = 0; })")  # clicking scrolled the tree sideways
        _screenshot(chrome, "comparison-plot.png", shots)

    assert all((folder / name).stat().st_size > 10_000 for folder in shots
               for name in ("experiment-runs.png", "comparison-plot.png"))


def _widen_run_names(chrome, wait) -> None:
    """Drag the Run Name column's edge, as a person would, so the parent's full name shows in the screenshot."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    header = "//div[@role='columnheader'][@col-id='attributes.`Run Name`']"
    with contextlib.suppress(Exception):  # cosmetic: the checks above have already passed
        handle = wait.until(EC.presence_of_element_located((By.XPATH, f"{header}//div[contains(@class, 'ag-header-cell-resize')]")))
        ActionChains(chrome).move_to_element(handle).click_and_hold().move_by_offset(200, 0).release().perform()
        time.sleep(0.5)
