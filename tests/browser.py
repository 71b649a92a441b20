"""Headless Chromium for tests (not a test module): open a Snakemake 9 HTML report and drive it.

``ensure_chromium()`` installs Debian's ``chromium`` and ``chromium-driver`` with apt-get when
they are missing and returns both paths; ``headless_chromium()`` yields a Selenium WebDriver on
them. Selenium is always given ``/usr/bin/chromedriver`` explicitly (and ``SE_OFFLINE=true``), so
Selenium Manager never downloads a driver or a browser.

How a Snakemake 9 report is built (``snakemake/report/html_reporter/template``, checked on
snakemake 9.27.1): a single page with a React app in ``#app``; the data are page globals
``categories`` ({category: {subcategory: [result path, ...]}}), ``results`` ({path: {labels,
caption (HTML), data_uri, mime_type, job_properties: {rule, wildcards}}}) and ``app`` (the
React root; ``app.state.navbarMode`` is one of menu, category, subcategory, resultinfo, ...).
The page is a flex row of a left ``<nav>`` and a content ``<div>``:

* the nav holds breadcrumbs (``nav > ol > li``; the first is a home icon link) and one list:
  in *menu* mode ``ul > li > a > span`` items "Workflow", "Statistics", "About", then under a
  "Results" heading one item per category (sorted; a report with one category shows a single
  item "Results" instead); in *category* mode one item per subcategory (sorted). A category
  with a single subcategory skips that list: clicking it shows the subcategory's results;
* a subcategory's results are a ``<table>``: ``thead`` has one ``th`` per label (CSS
  upper-cases them; their textContent is the label name as written) or one "File" column when
  the results carry no labels; each ``tbody tr`` has one ``td`` per label value (or the path)
  and a last ``td`` with two buttons (``a[type=button]``): the eye shows the result in the
  content area, the "i" shows its info (labels, the rendered caption under "Description",
  size, rule, wildcards) in the nav;
* an image result is shown as ``<img src="data:image/png;...">`` in the content area; HTML and
  PDF results as an ``<iframe>``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from system_packages import apt_install

PACKAGES = ["chromium", "chromium-driver"]
CHROMIUM = "chromium"
CHROMEDRIVER = "chromedriver"
SBIN = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
DEFAULT_TIMEOUT = 20.0
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", "--force-device-scale-factor=1"]

# JavaScript that lists the shown images of the content area (every <img> outside the nav).
_CONTENT_IMAGES_JS = """
return Array.from(document.querySelectorAll('#app img'))
    .filter(img => !img.closest('nav'))
    .map(img => ({src: img.getAttribute('src').slice(0, 60), complete: img.complete,
                  naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
                  width: img.width, height: img.height,
                  box: (r => [r.x, r.y, r.width, r.height])(img.getBoundingClientRect())}));
"""

# True once the content area shows an <img> whose src is the app's current content.
_SHOWN_IMAGE_CURRENT_JS = """
const imgs = Array.from(document.querySelectorAll('#app img')).filter(img => !img.closest('nav'));
return imgs.length > 0 && app.state.content === 'img'
    && imgs.some(img => img.getAttribute('src') === app.state.contentPath);
"""
# Calls back with "ok" or the error for each content-area <img>, once each has settled.
_DECODE_JS = """
const done = arguments[arguments.length - 1];
const imgs = Array.from(document.querySelectorAll('#app img')).filter(img => !img.closest('nav'));
Promise.all(imgs.map(img => img.decode().then(() => 'ok', error => String(error)))).then(done);
"""


class ChromiumUnavailable(RuntimeError):
    """Chromium or chromedriver is missing and could not be installed."""


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN)
    return shutil.which(name, path=path)


def ensure_chromium() -> tuple[Path, Path]:
    """Return (chromium, chromedriver), installing Debian's packages with apt-get if missing.

    Raises ChromiumUnavailable naming what failed (not root, no apt-get, the install, a binary
    still missing after it)."""
    found = _which(CHROMIUM), _which(CHROMEDRIVER)
    if all(found):
        return Path(found[0]), Path(found[1])
    missing = [name for name, path in zip((CHROMIUM, CHROMEDRIVER), found) if path is None]
    why = apt_install(PACKAGES)
    if why is not None:
        raise ChromiumUnavailable(f"{', '.join(missing)} not installed and {why}")
    found = _which(CHROMIUM), _which(CHROMEDRIVER)
    still = [name for name, path in zip((CHROMIUM, CHROMEDRIVER), found) if path is None]
    if still:
        raise ChromiumUnavailable(f"apt-get installed {' '.join(PACKAGES)}, but "
                                  f"{', '.join(still)} is still not on PATH")
    return Path(found[0]), Path(found[1])


@contextlib.contextmanager
def headless_chromium(width: int = 1400, height: int = 1000) -> Iterator:
    """Yield a Selenium Chrome WebDriver on headless Debian Chromium (quit on exit).

    The browser's console is logged (``console_errors``); the viewport is width x height CSS
    pixels at device scale 1, so page screenshots have that size."""
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager go online
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for argument in [*CHROMIUM_ARGS, f"--window-size={width},{height}"]:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(chromedriver))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(60)
        # --window-size is the outer window; grow it so the viewport (and screenshots) is
        # width x height
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        if inner != [width, height]:
            size = driver.get_window_size()
            driver.set_window_size(size["width"] + width - inner[0],
                                   size["height"] + height - inner[1])
        yield driver
    finally:
        driver.quit()


# --- driving a report --------------------------------------------------------------------------

def _wait(driver, timeout: float | None = None):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout or DEFAULT_TIMEOUT, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,))


def _until(driver, condition, message: str, timeout: float | None = None):
    """Wait for condition(driver) to be truthy; on timeout raise AssertionError(message + state)."""
    from selenium.common.exceptions import TimeoutException

    try:
        return _wait(driver, timeout).until(condition)
    except TimeoutException:
        raise AssertionError(f"{message} (after {timeout or DEFAULT_TIMEOUT:g} s; "
                             f"{describe(driver)})") from None


def app_state(driver) -> dict:
    """The React app's view state: navbarMode, content, category, subcategory, resultPath and
    renderTrigger (a new random number whenever the content area changes)."""
    return driver.execute_script(
        "if (typeof app === 'undefined' || !app.state) return null;"
        "const s = app.state; return {navbarMode: s.navbarMode, content: s.content,"
        " category: s.category ?? null, subcategory: s.subcategory ?? null,"
        " resultPath: s.resultPath ?? null, renderTrigger: s.renderTrigger ?? null};") or {}


def describe(driver) -> str:
    """One line on where the report is (for assertion messages)."""
    try:
        return (f"state {app_state(driver)}, nav items {nav_items(driver)}, "
                f"breadcrumbs {breadcrumbs(driver)}")
    except Exception as error:  # noqa: BLE001 - only for a message
        return f"state unavailable: {error!r}"


def _click(driver, element) -> None:
    """Click like a user; if something covers the element, scroll it into view and retry."""
    from selenium.common.exceptions import ElementClickInterceptedException

    try:
        element.click()
    except ElementClickInterceptedException:
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
        element.click()


def open_report(driver, report: Path | str, timeout: float | None = None) -> None:
    """Load a report (a path or URL) and wait until the app has rendered its menu."""
    url = report if isinstance(report, str) and "://" in report else Path(report).resolve().as_uri()
    driver.get(url)
    _until(driver,
           lambda d: app_state(d).get("navbarMode") == "menu" and "Workflow" in nav_items(d),
           f"the report {url} did not render its menu", timeout)


def report_data(driver) -> dict:
    """The report's own data: {"categories": {...}, "results": {path: {...}}} without data URIs."""
    return driver.execute_script(
        "const r = {}; for (const [p, v] of Object.entries(results)) {"
        " const {data_uri, ...rest} = v; r[p] = rest; }"
        "return {categories: categories, results: r};")


def breadcrumbs(driver) -> list[str]:
    """The texts of the nav's breadcrumbs ("" for the home icon)."""
    return driver.execute_script(
        "const ol = document.querySelector('#app nav ol'); if (!ol) return [];"
        "return Array.from(ol.children)"
        " .filter(li => !li.querySelector('input') && (li.querySelector('a') || li.textContent))"
        " .map(li => li.textContent.trim());")


def nav_items(driver) -> list[str]:
    """The labels of the nav's current list items (menu entries, categories, subcategories)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#app nav ul > li > a > span'))"
        " .map(s => s.textContent);")


def _nav_link(driver, label: str):
    from selenium.webdriver.common.by import By

    for span in driver.find_elements(By.CSS_SELECTOR, "#app nav ul > li > a > span"):
        if span.get_attribute("textContent") == label:
            return span.find_element(By.XPATH, "..")
    return None


def go_home(driver, timeout: float | None = None) -> None:
    """Click the home breadcrumb (back to the main menu)."""
    from selenium.webdriver.common.by import By

    if app_state(driver).get("navbarMode") == "menu":
        return
    home = _until(driver,
                  lambda d: d.find_element(By.CSS_SELECTOR, "#app nav ol > li:first-child a"),
                  "no home breadcrumb", timeout)
    _click(driver, home)
    _until(driver, lambda d: app_state(d).get("navbarMode") == "menu",
           "clicking the home breadcrumb did not return to the menu", timeout)


def categories(driver) -> list[str]:
    """The categories the main menu lists (the entries after the "Results" heading)."""
    go_home(driver)
    items = nav_items(driver)
    data = report_data(driver)["categories"]
    return [item for item in items if item in data or (len(data) == 1 and item == "Results")]


def open_category(driver, category: str, timeout: float | None = None) -> list[str]:
    """Click a category in the main menu; return the subcategories it lists.

    A category with a single subcategory goes straight to that subcategory's results (Snakemake
    shows no list then); the returned list is that subcategory's name, from the report's data."""
    go_home(driver, timeout)
    data = report_data(driver)["categories"]
    assert category in data, f"the report has no category {category!r}: {sorted(data)}"
    label = "Results" if len(data) == 1 else category
    link = _until(driver, lambda d: _nav_link(d, label),
                  f"the menu does not list category {label!r}", timeout)
    _click(driver, link)
    _until(driver, lambda d: app_state(d).get("category") == category
           and app_state(d).get("navbarMode") in ("category", "subcategory"),
           f"clicking category {category!r} did not open it", timeout)
    if app_state(driver)["navbarMode"] == "subcategory":
        _until(driver, lambda d: _result_rows(d),
               f"category {category!r} shows no results", timeout)
        return [app_state(driver)["subcategory"]]
    expected = sorted(data[category], key=str.casefold)
    _until(driver, lambda d: len(nav_items(d)) == len(expected),
           f"category {category!r} does not list its {len(expected)} subcategories {expected}",
           timeout)
    return nav_items(driver)


def open_subcategory(driver, category: str, subcategory: str,
                     timeout: float | None = None) -> None:
    """Open a category and then one of its subcategories, and wait for its results table."""
    listed = open_category(driver, category, timeout)
    assert subcategory in listed, (f"category {category!r} lists {listed}, "
                                   f"not subcategory {subcategory!r}")
    if app_state(driver)["navbarMode"] != "subcategory":
        link = _until(driver, lambda d: _nav_link(d, subcategory),
                      f"no link for subcategory {subcategory!r}", timeout)
        _click(driver, link)
    _until(driver, lambda d: app_state(d).get("navbarMode") == "subcategory"
           and app_state(d).get("subcategory") == subcategory and _result_rows(d),
           f"subcategory {category!r} / {subcategory!r} shows no results table", timeout)


def _result_rows(driver) -> list:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, "#app nav table tbody tr")


def list_results(driver, category: str | None = None, subcategory: str | None = None,
                 timeout: float | None = None) -> list[dict[str, str]]:
    """The rows of a results table as {column: value} (columns: label names, or "File").

    With category (and subcategory) it navigates there first; without, it reads the table shown."""
    if category is not None:
        if subcategory is None:
            listed = open_category(driver, category, timeout)
            assert app_state(driver)["navbarMode"] == "subcategory", (
                f"category {category!r} has several subcategories {listed}: name one")
        else:
            open_subcategory(driver, category, subcategory, timeout)
    _until(driver, lambda d: _result_rows(d), "no results table is shown", timeout)
    return driver.execute_script(
        "const table = document.querySelector('#app nav table');"
        "const heads = Array.from(table.querySelectorAll('thead th'))"
        " .map(th => th.textContent).filter(t => t !== '');"
        "return Array.from(table.querySelectorAll('tbody tr')).map(tr => {"
        " const cells = Array.from(tr.children).slice(0, heads.length);"
        " return Object.fromEntries(heads.map((h, i) => [h, cells[i].textContent])); });")


def _row_buttons(driver, name: str, timeout: float | None):
    """The (show, info) buttons of the results row whose first cell is name (or ends with it)."""
    from selenium.webdriver.common.by import By

    def find(d):
        for row in _result_rows(d):
            cells = row.find_elements(By.CSS_SELECTOR, ":scope > td")
            first = cells[0].get_attribute("textContent") if cells else None
            if first == name or (first and first.endswith("/" + name)):
                buttons = cells[-1].find_elements(By.CSS_SELECTOR, "a[type=button]")
                if len(buttons) == 2:
                    return buttons
        return None

    return _until(driver, find, f"no result {name!r} in the shown results table", timeout)


def show_result(driver, name: str, timeout: float | None = None) -> str:
    """Click the "show" (eye) button of result `name` (first label value, or path / file name)
    in the shown results table; wait until it is the content; return the content kind (img,
    html, pdf)."""
    show, _ = _row_buttons(driver, name, timeout)
    href = show.get_attribute("href") or ""
    assert not href.startswith("data:"), (f"result {name!r} is a download link, not shown in "
                                          f"the report (its mime type is not img/html/pdf)")
    before = app_state(driver).get("renderTrigger")
    _click(driver, show)
    _until(driver, lambda d: app_state(d).get("renderTrigger") != before
           and app_state(d).get("content") in ("img", "html", "pdf"),
           f"clicking show on result {name!r} did not show it", timeout)
    return app_state(driver)["content"]


def result_info(driver, name: str, timeout: float | None = None) -> dict:
    """Click the info button of result `name`; return {"path", "labels", "caption", "text"}
    as shown in the nav (caption: the text under "Description", "" if none). Use go_home or
    open_subcategory afterwards to get back to a list."""
    from selenium.webdriver.common.by import By

    _, info = _row_buttons(driver, name, timeout)
    _click(driver, info)
    _until(driver, lambda d: app_state(d).get("navbarMode") == "resultinfo",
           f"clicking info on result {name!r} did not show its info", timeout)
    nav = driver.find_element(By.CSS_SELECTOR, "#app nav")
    return driver.execute_script(
        "const nav = arguments[0]; const lis = Array.from(nav.querySelectorAll('ul > li'));"
        "let caption = '';"
        "const i = lis.findIndex(li => li.textContent.trim().toLowerCase() === 'description');"
        "if (i >= 0 && lis[i + 1]) caption = lis[i + 1].textContent.trim();"
        "const labels = {}; const t = nav.querySelector('ul table');"
        "if (t) { const hs = Array.from(t.querySelectorAll('thead th')).map(h => h.textContent);"
        " const ds = Array.from(t.querySelectorAll('tbody td')).map(d => d.textContent.trim());"
        " hs.forEach((h, k) => { if (h) labels[h] = ds[k]; }); }"
        "return {path: app.state.resultPath, labels: labels, caption: caption,"
        " text: nav.innerText};", nav)


def _decode_png(png: bytes):
    """An RGB(A) float array in [0, 1] from PNG bytes (Pillow, else matplotlib)."""
    import numpy as np

    try:
        from PIL import Image

        with Image.open(io.BytesIO(png)) as image:
            return np.asarray(image.convert("RGB"), dtype=float) / 255.0
    except ImportError:
        import matplotlib.image

        return np.asarray(matplotlib.image.imread(io.BytesIO(png), format="png"), dtype=float)


def pixel_stats(image) -> dict:
    """{"width", "height", "std", "colors"} of an image (PNG bytes or an RGB(A) array in [0, 1]):
    the pixel standard deviation over all channels and the number of distinct colours (a blank
    image has std 0 and one colour)."""
    import numpy as np

    pixels = _decode_png(image) if isinstance(image, bytes) else np.asarray(image, dtype=float)
    rgb = np.round(pixels[..., :3] * 255).astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return {"width": int(pixels.shape[1]), "height": int(pixels.shape[0]),
            "std": float(pixels[..., :3].std()) if pixels.size else 0.0,
            "colors": int(len(np.unique(packed)))}


def image_rendered(driver, timeout: float | None = None, min_std: float = 0.01) -> dict:
    """Wait until the content area's image is shown and decoded; report what the browser shows.

    Waits until the shown <img> has the app's current content as its src, then until the
    browser has decoded it (HTMLImageElement.decode()); then takes one screenshot of the page
    (the viewport) and crops each image's on-screen box from it. Returns {"images": [{src
    (first 60 chars), complete, decode ("ok" or the error), naturalWidth, naturalHeight (of
    the decoded image), width, height (laid out), box (x, y, w, h in the viewport),
    screenshot: pixel_stats of the crop, None if the image is not on screen}], "page":
    pixel_stats of the whole screenshot, "decoded": every image decoded, with naturalWidth and
    naturalHeight > 0, "non_blank": the page and every image's crop have a pixel std >
    min_std}. The page alone is never blank (the nav is drawn); an image's crop is the check
    that it was painted."""
    _until(driver, lambda d: d.execute_script(_SHOWN_IMAGE_CURRENT_JS),
           "no image is shown in the content area, or not yet the one the app shows", timeout)
    # decode() settles once the image is decoded (or fails to); then it can be measured
    driver.set_script_timeout(timeout or DEFAULT_TIMEOUT)
    decodes = driver.execute_async_script(_DECODE_JS)
    images = driver.execute_script(_CONTENT_IMAGES_JS)
    for image, decode in zip(images, decodes):
        image["decode"] = decode
    screenshot = _decode_png(driver.get_screenshot_as_png())
    scale = driver.execute_script("return window.devicePixelRatio") or 1
    for image in images:
        x, y, w, h = (round(v * scale) for v in image["box"])
        crop = screenshot[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)]
        image["screenshot"] = pixel_stats(crop) if crop.size else None
    page = pixel_stats(screenshot)
    decoded = bool(images) and all(i["decode"] == "ok" and i["naturalWidth"] > 0
                                   and i["naturalHeight"] > 0 for i in images)
    non_blank = page["std"] > min_std and all(i["screenshot"] and i["screenshot"]["std"] > min_std
                                              for i in images)
    return {"images": images, "page": page, "decoded": decoded, "non_blank": non_blank}


def console_errors(driver) -> list[str]:
    """The SEVERE messages of the browser console since the last call."""
    try:
        return [entry["message"] for entry in driver.get_log("browser")
                if entry.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - a driver without log support
        return []
