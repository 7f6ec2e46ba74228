"""Stage 0 on the trainer's loop: the objectives (global-batch InfoNCE, softmax classification),
the step that trains one (dataset, objective) pair, its callbacks and the held-out evaluation.

    losses.py      each rank's share of the global-batch losses
    trainer.py     EncoderTrainer: Trainer with a one-pair step
    callbacks.py   per-pair metrics window, held-out evaluation, the trainer's stop/save policies
    evaluation.py  zero-shot classification through prompts, classifier accuracy, retrieval recall
"""
