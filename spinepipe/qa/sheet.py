"""One PNG per study: are the points on the discs, is the slice the right one, what did each
model see (``render_study_sheet``).

The sheet is drawn from artifacts a run has already computed (localizer stacks, series
geometry, predicted and annotated points, crops, probabilities); nothing is re-decoded or
re-predicted. Its panels (planned by ``spinepipe.qa.plan.plan_sheet``):

1. the Sagittal T2/STIR canal slice with the five predicted level points;
2. the left and right Sagittal T1 foramen slices with theirs;
3. each level's axial slice with the left and right recess points (and the sagittal canal
   point projected onto it, with its distance from the slice);
4. per level, every view and every cached slice of the crops the severity models read
   (slices that do not exist or could not be decoded drawn hatched, "masked"; the model's
   window, without the jitter margins, outlined);
5. per condition and level, the predicted probabilities with the true severity boxed.

Where an annotated point exists it is drawn too, joined to the prediction by a line with the
distance between the two in mm, measured in patient space through each point's own slice
geometry (not in pixels of the displayed image).

**Left and right follow the patient, never the condition's name** (``spinepipe.qa.orientation``):
every image edge is labelled with the patient direction it points to, computed from the
slice's direction cosines; axial images are shown as stored, so a feet-first stack shows the
patient's left on the image's left and says so. Each sagittal image states the side of the
mid-line it lies on, from its position relative to the canal slice; a foramen panel whose
position contradicts its condition's side is titled in red.

Images are shown with square millimetres (the aspect follows pixel spacing and the stack's
resizing). Rendering is a handful of ``imshow`` calls on whole arrays (the crops of a level
are assembled into one montage with numpy), so a sheet takes a few tenths of a second.
"""

from __future__ import annotations

from pathlib import Path

from spinepipe.constants import LEVELS
from spinepipe.qa.drawing import draw_grid, draw_montage, draw_panel, pyplot
from spinepipe.qa.panels import wrap_text
from spinepipe.qa.plan import SheetPlan, plan_sheet
from spinepipe.qa.types import StudyInputs


def render_study_sheet(inputs: StudyInputs, path: Path, dpi: int) -> SheetPlan:
    """Draw the study's sheet to ``path`` (PNG; parent folders created) at ``dpi`` (config
    ``qa.dpi``) and return its plan.

    Never raises for a missing series, point or crop: the panel says what is missing.
    """
    plan = plan_sheet(inputs)
    plt = pyplot()
    fig = plt.figure(figsize=(15, 11.5))
    grid = fig.add_gridspec(3, 5, height_ratios=[1.3, 1.0, 1.05], left=0.06, right=0.99,
                            top=0.91, bottom=0.02, wspace=0.28, hspace=0.22)
    draw_panel(fig.add_subplot(grid[0, 0]), plan.canal)
    draw_panel(fig.add_subplot(grid[0, 1]), plan.foramina["left"])
    draw_panel(fig.add_subplot(grid[0, 2]), plan.foramina["right"])
    draw_grid(fig.add_subplot(grid[0, 3:]), plan.grid)
    for j, level in enumerate(LEVELS):
        draw_panel(fig.add_subplot(grid[1, j]), plan.axial[level])
        draw_montage(fig.add_subplot(grid[2, j]), plan.crops[level], labels=j == 0)
    legend = ("red o: predicted · green x: annotated (line: distance in patient space) · "
              "hollow / (sN): point on another slice · blue +: sagittal canal point · "
              "axial L/R by a point: the side it was predicted for\n"
              "edge letters: patient direction from the slice geometry · crops: rows = views of each "
              "model, columns = slices (dotted box: model window; grey offsets: jitter-only slices; "
              "hatched: masked)")
    fig.suptitle(plan.title, fontsize=11, x=0.01, ha="left", y=0.995)
    if inputs.notes:
        notes = " · ".join(f"{k}: {v}" for k, v in inputs.notes.items())
        fig.text(0.99, 0.995, wrap_text(notes, 120, 2), fontsize=7.5, ha="right", va="top", color="#a00000")
    fig.text(0.01, 0.945, legend, fontsize=7.5, ha="left", va="bottom", color="#333333")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # zlib level 3 rather than 6: measured on the default run's test sheets, 0.35 vs 0.42 s per
    # savefig (drawing included) for the same size (547 vs 558 KiB)
    fig.savefig(path, dpi=dpi, pil_kwargs={"compress_level": 3})
    plt.close(fig)
    return plan
