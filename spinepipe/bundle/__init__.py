"""A trained pipeline as one portable folder (a bundle): everything grading new studies needs,
and nothing else.

Layout (``results/bundle/`` of a training run)::

    manifest.json        format version, code version, families, folds, sha256 of every file
    MODEL_CARD.md        what it grades, the data it learnt from, its scores, known limits
    config.json          the settings the inference stages read (localization, crops, ensemble)
    priors.csv           training label frequencies per condition and level (rows no view serves)
    temperatures.json    per-family temperature of the ensemble
    localizers/          point model per series type and fold (slice models where used): <name>.pt, .onnx
    severity/            one model per condition family and fold: <name>.pt and <name>.onnx

``spinepipe.bundle.manifest`` reads and verifies one (prediction side, light);
``spinepipe.bundle.write`` writes one (training side: ONNX export, model card).
"""
