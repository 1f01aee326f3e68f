"""The web page in a real browser: headless Chromium uploads an image and reads the probabilities.

Skipped cleanly without Chromium and chromedriver (``make browser-test`` installs them with apt).
The screenshot goes to ``$SKINFEAT_SCREENSHOT`` when set, else into the test's temp folder.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("pytorch_grad_cam")
webdriver = pytest.importorskip("selenium.webdriver")

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or \
    shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.slow,   # end to end: whole CLI / API runs
              pytest.mark.skipif(not (BROWSER and DRIVER),
                                 reason="no Chromium + chromedriver (make browser-test "
                                        "installs them)")]


@pytest.fixture
def server(ship_runs):
    import uvicorn

    from skinfeat.deploy.model import Model
    from skinfeat.deploy.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(Model(ship_runs["head"]))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


def test_page_in_headless_chromium(server, ship_runs, synth_table, tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    options = Options()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    shot = Path(os.environ.get("SKINFEAT_SCREENSHOT") or tmp_path / "page.png")
    try:
        driver.get(server)
        wait = WebDriverWait(driver, 60)
        wait.until(ec.presence_of_element_located((By.ID, "field-age")))
        assert driver.find_element(By.ID, "random-banner").is_displayed()
        assert "Research use only" in driver.find_element(By.ID, "notice").text
        driver.find_element(By.ID, "image").send_keys(str(Path(synth_table["path"].iloc[0])))
        driver.find_element(By.ID, "field-age").send_keys("55")
        Select(driver.find_element(By.ID, "field-sex")).select_by_value("female")
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#probs tr.prob")))
        rows = driver.find_elements(By.CSS_SELECTOR, "#probs tr.prob")
        probs = {r.find_element(By.CLASS_NAME, "class").text:
                 float(r.find_element(By.CLASS_NAME, "p").text.rstrip(" %")) for r in rows}
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('cam'); return i.complete && i.naturalWidth > 0"))
        attribution = driver.find_element(By.ID, "attribution").text
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    print(f"\nprobabilities read from the page: {probs}\nattribution table: "
          f"{attribution!r}\nscreenshot: {shot}")
    from skinfeat.deploy.model import Model
    want = Model(ship_runs["head"]).predict_image(synth_table["path"].iloc[0], age=55,
                                                      sex="female").probabilities
    top3 = sorted(want, key=want.get, reverse=True)[:3]
    assert list(probs) == top3
    for c in top3:
        assert abs(probs[c] - 100 * want[c]) < 0.006, (c, probs[c], want[c])
    assert "age = 55" in attribution and "sex = female" in attribution
    assert shot.stat().st_size > 10_000
