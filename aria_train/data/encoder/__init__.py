"""Stage 0's data (encoder pretraining by alternating gradient descent over (dataset, objective)
pairs).

    config.py    encoder.datasets / encoder.pairs entries and their checks
    units.py     per-unit sample index (UNIT.encidx): image location, class label, caption
    dataset.py   one dataset's usable samples, held-out split, class names; images -> crops
    shards.py    labelled shards (KEY.png + KEY.cls, classes.txt) and the synthetic demo datasets
    prompts.py   class names rendered with a template drawn per sample (CLIP-style list)
    schedule.py  which pair each step trains: weighted round-robin or seeded draws
    batches.py   per-pair streams and the resumable PairBatches (the data part of a checkpoint)
    build.py     all of it from a run's config
"""
