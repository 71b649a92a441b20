"""Visual quality assurance: per-study sheets drawn from a pipeline run's artifacts.

``spinepipe.qa.sheet`` renders one study (level points on the sagittal and axial slices,
the crops every model saw, probabilities against the truth); ``spinepipe.qa.inputs``
gathers what a sheet needs from the files a run wrote.
"""
