"""Visual quality assurance: per-study sheets and galleries drawn from a pipeline run's artifacts.

- ``types``: what a sheet is drawn from (``StudyInputs``); ``inputs`` / ``sources`` fill it
  from the files a run wrote (no drawing code).
- ``orientation``: patient directions of image edges and sagittal sides of the mid-line.
- ``points``, ``panels``, ``montage``, ``plan``: a study sheet planned without drawing
  (``plan_sheet``).
- ``drawing``: the matplotlib parts; ``sheet``: a study's sheet as a PNG
  (``render_study_sheet``).
- ``cases``, ``tiles``, ``galleries``: the gallery cases chosen from run tables, each tile
  planned, and the contact sheets drawn (``render_gallery``).
"""
