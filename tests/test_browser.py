"""The Snakemake HTML report, opened in headless Chromium (tests/browser.py).

A toy workflow shaped like rules/qa.smk: a directory of per-study PNGs reported with
``patterns=["{study_id}.png"]`` in category QA / subcategory "Study sheets" with a ``study``
label and a caption that uses ``snakemake.wildcards.study_id``, a second QA subcategory
("Galleries", as in the pipeline, so that QA lists its subcategories instead of jumping to
the only one) and a plain image in category Evaluation. Checks that the report lists and
shows them, and that the pattern wildcards reach the labels and the captions.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import browser  # noqa: E402  (tests/ is on sys.path: pytest rootdir-inserts test dirs)
import pytest

pytestmark = pytest.mark.slow

STUDIES = ["1001", "1002", "1003"]

SNAKEFILE = textwrap.dedent('''
    STUDIES = {studies!r}


    def plot(path, title, ys):
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
        ax.plot(range(len(ys)), ys)
        ax.set_title(title)
        fig.savefig(path)
        plt.close(fig)


    rule all:
        input:
            "results/qa/studies",
            "results/qa/galleries",
            "results/other.png",


    rule qa_studies:
        output:
            report(directory("results/qa/studies"), patterns=["{{study_id}}.png"],
                   caption="caption.rst", category="QA", subcategory="Study sheets",
                   labels={{"study": "{{study_id}}"}}),
        run:
            import os
            os.makedirs(output[0], exist_ok=True)
            for i, study in enumerate(STUDIES):
                plot(os.path.join(output[0], f"{{study}}.png"), study, [i, 2 - i, i])


    rule qa_galleries:
        output:
            report(directory("results/qa/galleries"), patterns=["{{gallery}}.png"],
                   caption="gallery.rst", category="QA", subcategory="Galleries",
                   labels={{"gallery": "{{gallery}}"}}),
        run:
            import os
            os.makedirs(output[0], exist_ok=True)
            plot(os.path.join(output[0], "worst.png"), "worst", [2, 0, 1])


    rule other:
        output:
            report("results/other.png", category="Evaluation"),
        run:
            plot(output[0], "other", [1, 0])
''').format(studies=STUDIES)


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args],
                            cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (f"snakemake {' '.join(args)} failed:\n"
                                    f"{(result.stdout + result.stderr)[-3000:]}")
    return result


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("report_workflow")
    (workdir / "Snakefile").write_text(SNAKEFILE)
    (workdir / "caption.rst").write_text(
        "Study sheet of study {{ snakemake.wildcards.study_id }}.\n")
    (workdir / "gallery.rst").write_text("Gallery {{ snakemake.wildcards.gallery }}.\n")
    snakemake(workdir)
    snakemake(workdir, "--report", "report.html")
    assert (workdir / "report.html").is_file()
    return workdir / "report.html"


@pytest.fixture(scope="module")
def driver(chromium):
    with browser.headless_chromium() as driver:
        yield driver


def png_size(path: Path) -> tuple[int, int]:
    import matplotlib.image

    height, width = matplotlib.image.imread(path).shape[:2]
    return width, height


def test_report_lists_and_shows_study_sheets(report, driver):
    browser.open_report(driver, report)
    assert browser.categories(driver) == ["Evaluation", "QA"]

    assert browser.open_category(driver, "QA") == ["Galleries", "Study sheets"], \
        "category QA must list both subcategories"
    rows = browser.list_results(driver, "QA", "Study sheets")
    assert rows == [{"study": study} for study in STUDIES], \
        f"Study sheets must list one row per study, labelled by the pattern wildcard: {rows}"

    assert browser.show_result(driver, "1002") == "img"
    shown = browser.image_rendered(driver)
    assert len(shown["images"]) == 1, f"one image expected in the content area: {shown}"
    image = shown["images"][0]
    assert "filename=1002.png" in image["src"], f"the wrong image is shown: {image}"
    assert shown["decoded"], f"the browser did not decode the image: {image}"
    expected = png_size(report.parent / "results/qa/studies/1002.png")
    assert (image["naturalWidth"], image["naturalHeight"]) == expected, image
    assert shown["non_blank"], f"the image or the page renders blank: {shown}"

    info = browser.result_info(driver, "1003")
    assert info["path"] == "results/qa/studies/1003.png"
    assert info["labels"] == {"study": "1003"}, info
    assert info["caption"] == "Study sheet of study 1003.", \
        f"the caption must have the pattern wildcard filled in: {info['caption']!r}"

    rows = browser.list_results(driver, "QA", "Galleries")
    assert rows == [{"gallery": "worst"}], rows

    # a category with one subcategory ("Other") shows its results directly, unlabelled
    assert browser.open_category(driver, "Evaluation") == ["Other"]
    assert browser.list_results(driver) == [{"File": "results/other.png"}]
    assert browser.show_result(driver, "other.png") == "img"
    shown = browser.image_rendered(driver)
    assert shown["decoded"] and shown["non_blank"], shown
    assert "filename=other.png" in shown["images"][0]["src"], shown

    assert browser.console_errors(driver) == [], "the report logged errors in the console"


def test_report_data_has_pattern_wildcards(report, driver):
    """The report's data: every study sheet carries its wildcard in labels, caption and job."""
    browser.open_report(driver, report)
    data = browser.report_data(driver)
    assert data["categories"]["QA"]["Study sheets"] == [
        f"results/qa/studies/{study}.png" for study in STUDIES]
    for study in STUDIES:
        result = data["results"][f"results/qa/studies/{study}.png"]
        assert result["labels"] == {"study": study}
        assert result["caption"].strip() == f"<p>Study sheet of study {study}.</p>"
        assert result["job_properties"]["wildcards"] == f"study_id={study}"
        assert result["mime_type"] == "image/png"
