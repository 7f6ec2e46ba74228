"""Building blocks shared by the MoE layer (aria_train.moe) and the models (aria_train.model),
and the image-packing contract shared by the models and the data pipeline. Nothing here knows
about parallelism or configuration beyond plain sizes."""
