"""`deepfake-moe serve` as a user meets it: the real command on 127.0.0.1, and its page in headless Chromium.

The browser test needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and selenium;
it is skipped only when they are absent. Screenshots are saved under the test's tmp folder.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
IMAGES = [EXAMPLES / "fake_demo.jpg", EXAMPLES / "real_demo.jpg"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The built-in model served by `deepfake-moe serve` in its own process on a free loopback port."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepfake_moe.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--runtime", "torch", "--no-access-log"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve exited with {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve did not answer within 180 s:\n{log.read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api_results(base: str) -> list[dict]:
    files = [("file", (p.name, p.read_bytes(), "image/jpeg")) for p in IMAGES]
    r = httpx.post(base + "/v1/predict", files=files, timeout=60)
    assert r.status_code == 200
    return r.json()["results"]


def test_serve_command_answers_like_predict(server, capsys):
    from deepfake_moe.cli import main

    results = api_results(server)
    assert main(["predict", *map(str, IMAGES), "--runtime", "torch", "--no-progress"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(results)
    for result, row in zip(results, rows):
        assert Path(row["path"]).name == result["name"] and row["verdict"] == result["verdict"]
        assert result["probability"] == pytest.approx(float(row["probability"]), abs=1e-5)
    assert httpx.get(server + "/docs").status_code == 200


def chromium_driver():
    webdriver = pytest.importorskip("selenium.webdriver")
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


DROP_A_PNG = """
const done = arguments[arguments.length - 1];
const canvas = document.createElement("canvas");
canvas.width = 96; canvas.height = 64;
const ctx = canvas.getContext("2d");
ctx.fillStyle = "#3a7"; ctx.fillRect(0, 0, 96, 64); ctx.fillStyle = "#fd4"; ctx.fillRect(20, 10, 40, 30);
canvas.toBlob((blob) => {
  const data = new DataTransfer();
  data.items.add(new File([blob], "dropped.png", { type: "image/png" }));
  document.querySelector("#drop").dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true }));
  done(true);
}, "image/png");
"""


def test_page_scores_uploads_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    expected = {r["name"]: r for r in api_results(server)}
    driver = chromium_driver()
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server + "/")
        wait.until(lambda d: "experts" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "picker").send_keys("\n".join(str(p) for p in IMAGES))
        driver.execute_async_script(DROP_A_PNG)

        def cards(d):
            found = d.find_elements(By.CSS_SELECTOR, "#results .card")
            return found if len(found) == 3 and all(c.get_attribute("data-state") == "done" for c in found) else None

        shown = wait.until(cards)
        for card in shown[:2]:
            name = card.find_element(By.CSS_SELECTOR, ".name").text
            assert card.find_element(By.CSS_SELECTOR, ".verdict").text.lower() == expected[name]["verdict"]
            assert f"{expected[name]['probability']:.3f}" in card.find_element(By.CSS_SELECTOR, ".prob").text
        assert shown[2].find_element(By.CSS_SELECTOR, ".name").text == "dropped.png"
        assert shown[2].find_element(By.CSS_SELECTOR, ".verdict").text.lower() in ("fake", "real", "uncertain")

        shown[0].find_element(By.CSS_SELECTOR, ".experts summary").click()
        experts = shown[0].find_elements(By.CSS_SELECTOR, ".expert-list li")
        assert len(experts) == len(expected[IMAGES[0].name]["expert_probabilities"])
        assert all(e.is_displayed() for e in experts)
        shown[0].find_element(By.CSS_SELECTOR, ".explain").click()
        heatmap = shown[0].find_element(By.CSS_SELECTOR, ".heatmap")
        wait.until(lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap))
        driver.set_window_size(1000, 1650)  # tall enough for the whole page in one shot
        driver.save_screenshot(str(tmp_path / "serve-page.png"))

        driver.set_window_size(390, 844)  # a phone: nothing may need sideways scrolling
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        driver.save_screenshot(str(tmp_path / "serve-page-phone.png"))
        assert overflow <= 0

        driver.get(server + "/docs")  # Swagger UI renders from the packaged assets, with no network
        paths = wait.until(lambda d: {e.text.replace("\u200b", "") for e in
                                      d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")} or None)
        assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz"} <= paths
    finally:
        driver.quit()
    for shot in ("serve-page.png", "serve-page-phone.png"):
        assert (tmp_path / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshots: {tmp_path}")
