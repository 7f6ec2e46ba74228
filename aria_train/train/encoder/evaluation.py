"""Held-out evaluation of a stage-0 encoder: zero-shot classification through the text prompts,
the trained classifier head, and image-text retrieval.

- zero-shot accuracy: each class is the mean of its prompt embeddings (every template, unit
  vectors averaged then renormalised: CLIP's prompt ensemble); an image takes the class of
  highest cosine. Chance = 1 / classes (a uniform guess), reported beside the majority-class
  rate of the held-out images.
- head accuracy: the dataset's own softmax classifier, when a pair trains one.
- retrieval recall@k (image -> text and text -> image) over N held-out pairs: a hit when one of
  the k nearest candidates carries the query's own caption (identical captions are the same
  answer: the synthetic demo repeats some). Chance@1 = the mean share of candidates carrying the
  query's caption (1/N when captions are unique).
Every rank evaluates the whole held-out set (small); nothing is communicated.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F

from aria_train.data.encoder.batches import encode_texts
from aria_train.nn.image_patches import pack_images


@torch.no_grad()
def embed_images(model, dataset, reader, ids, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled ViT features [N, Dv], unit image embeddings [N, H]) of the samples `ids` [N, 2]."""
    pooled, embedded = [], []
    for start in range(0, len(ids), batch_size):
        crops = [reader.crop(dataset, int(u), int(i))[0] for u, i in ids[start:start + batch_size]]
        patches, grid = pack_images(crops, reader.patch_size)
        features = model.pooled_images(patches.float().to(device), grid)
        pooled.append(features.float())
        embedded.append(F.normalize(model.image_projection(features).float(), dim=-1))
    return torch.cat(pooled), torch.cat(embedded)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: Sequence[str], max_length: int, batch_size: int, device) -> torch.Tensor:
    """Unit text embeddings [N, H]."""
    out = []
    for start in range(0, len(texts), batch_size):
        tokens, lengths = encode_texts(tokenizer, texts[start:start + batch_size], max_length)
        out.append(F.normalize(model.embed_texts(tokens.to(device), lengths).float(), dim=-1))
    return torch.cat(out)


def zero_shot_accuracy(image_NH: torch.Tensor, labels_N: torch.Tensor, class_CH: torch.Tensor) -> float:
    """Share of images whose nearest class embedding is their own class."""
    return (image_NH @ class_CH.T).argmax(dim=-1).eq(labels_N).float().mean().item()


def retrieval_recall(image_NH: torch.Tensor, text_NH: torch.Tensor, captions: Sequence[str],
                     ks: Sequence[int] = (1, 5)) -> dict:
    """{"i2t_r@k", "t2i_r@k", "chance_r@1"}: see the module docstring."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    caption_N = torch.tensor([ids[c] for c in captions])
    same_NN = caption_N[:, None] == caption_N[None, :]
    sims_NN = image_NH @ text_NH.T
    out = {}
    for k in ks:
        k = min(k, len(captions))
        i2t = sims_NN.topk(k, dim=1).indices  # texts nearest each image
        t2i = sims_NN.T.topk(k, dim=1).indices  # images nearest each text
        out[f"i2t_r@{k}"] = same_NN.gather(1, i2t).any(dim=1).float().mean().item()
        out[f"t2i_r@{k}"] = same_NN.gather(1, t2i).any(dim=1).float().mean().item()
    out["chance_r@1"] = same_NN.float().mean(dim=1).mean().item()
    return out


def class_embeddings(model, tokenizer, prompts, class_names: Sequence[str], max_length: int, batch_size: int,
                     device) -> torch.Tensor:
    """[C, H] unit class embeddings, each the renormalised mean over the prompt templates."""
    rows = []
    for name in class_names:
        rows.append(F.normalize(embed_texts(model, tokenizer, prompts.all(name), max_length, batch_size,
                                            device).mean(dim=0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def evaluate_encoder(model, data, max_length: int, batch_size: int, device) -> dict:
    """Held-out metrics of every dataset with held-out samples (data: aria_train.data.encoder
    .build.EncoderData), keyed `<dataset>/<metric>`."""
    was_training = model.training
    model.eval()
    out = {}
    for name, dataset in data.datasets.items():
        ids = dataset.eval_ids
        if not len(ids):
            continue
        pooled, images = embed_images(model, dataset, data.readers[name], ids, batch_size, device)
        samples = [dataset.sample(int(u), int(i)) for u, i in ids]
        if dataset.kind == "labelled":
            labels = torch.tensor([label for _, label, _ in samples], device=images.device)
            classes = class_embeddings(model, data.tokenizer, data.prompts, dataset.class_names, max_length,
                                       batch_size, device)
            out[f"{name}/zero_shot_acc"] = zero_shot_accuracy(images, labels, classes)
            out[f"{name}/chance"] = 1.0 / len(dataset.class_names)
            out[f"{name}/majority"] = Counter(labels.tolist()).most_common(1)[0][1] / len(labels)
            if name in model.classifiers:
                out[f"{name}/head_acc"] = model.classify(name, pooled.to(device)).argmax(-1).eq(labels).float().mean().item()
        else:
            captions = [text for _, _, text in samples]
            texts = embed_texts(model, data.tokenizer, captions, max_length, batch_size, device)
            out.update({f"{name}/{k}": v for k, v in retrieval_recall(images, texts, captions).items()})
    model.train(was_training)
    return out
