"""Calibrate MEMORY_MERGE_THRESHOLD for an embedder: cosine similarity of true duplicates (the same
statement said again, reworded or repunctuated) against distinct statements of one person on the
same topics (which must stay separate memories).

    .venv/bin/python -m tools.bench.merge_calibration      # prints the distributions and the threshold

No vector threshold separates the two for the local embedder (a distinct pair reaches 0.986, a
repunctuated duplicate sits at 0.969), so a merge needs both: cosine ≥ the threshold, and
`domain.may_merge` (the same content words up to restatement words, the same names, places,
numbers and polarity). The threshold is the lowest cosine of the duplicates that pass `may_merge`
(rounded down to 0.01), checked to let no distinct pair that passes `may_merge` through.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys

import numpy as np

from services.memory.domain import may_merge
from services.memory.server import configured_embedder

# The same statement again: repunctuated, reworded, restated as the extractor would write it.
PARAPHRASES: tuple[tuple[str, str], ...] = (
    ("I'm allergic to peanuts.", "I'm allergic to peanuts!"),
    ("User is allergic to peanuts", "User is allergic to peanuts"),
    ("I live in Lisbon.", "I live in Lisbon!"),
    ("My sister Ana is a vet.", "my sister ana is a vet"),
    ("I work as a nurse.", "I work as a nurse"),
    ("User works as a nurse", "User works as a nurse at the hospital"),
    ("My dog is called Biscuit.", "My dog's name is Biscuit."),
    ("I love hiking.", "I really love hiking."),
    ("User loves jazz", "User really loves jazz"),
    ("I hate mornings.", "I hate mornings so much."),
    ("We should watch Dune together on Friday.", "We should watch Dune together on Friday!"),
    ("I started learning the cello.", "I've started learning the cello."),
    ("I moved to Porto last month.", "I moved to Porto last month"),
    ("My brother Rui lives in Berlin.", "My brother Rui lives in Berlin now."),
    ("I'm vegan.", "I am vegan."),
    ("User's name is Sam", "User's name is Sam"),
    ("I can't eat gluten.", "I cannot eat gluten."),
    ("My favourite band is Radiohead.", "My favorite band is Radiohead."),
    ("I'm so tired today.", "I'm so tired today..."),
    ("I have a cat named Miso.", "I have a cat called Miso."),
    ("I'm scared of spiders.", "I'm really scared of spiders."),
    ("User lives in Lisbon", "User lives in Lisbon, Portugal"),
    ("My birthday is on 3 May.", "My birthday is on the 3rd of May."),
    ("I just got a new job!", "I just got a new job."),
    ("My boss is called Helena.", "My boss's name is Helena."),
)

# One person's different statements on the same topics: merging any of these would lose a fact.
DISTINCT: tuple[tuple[str, str], ...] = (
    ("My sister lives in Porto.", "My sister lives in Lisbon."),
    ("My sister Ana is a vet.", "My sister Ana is a dentist."),
    ("My sister is a vet.", "My brother is a vet."),
    ("I live in Lisbon.", "I grew up in Lisbon."),
    ("I love hiking.", "I hate hiking."),
    ("User loves jazz", "User loves jazz piano"),
    ("User loves jazz", "User loves classical music"),
    ("I'm allergic to peanuts.", "I'm allergic to shellfish."),
    ("I'm allergic to peanuts.", "I'm not allergic to peanuts."),
    ("My dog is called Biscuit.", "My cat is called Biscuit."),
    ("My dog is called Biscuit.", "My dog is called Pepper."),
    ("I work as a nurse.", "I used to work as a nurse."),
    ("I work night shifts.", "I work day shifts."),
    ("I moved to Porto last month.", "I moved to Porto last year."),
    ("Yesterday I went hiking in Sintra.", "Yesterday I went hiking in Arrabida."),
    ("On Saturday I went to the dentist.", "On Monday I went to the dentist."),
    ("I have a cat named Miso.", "I have two cats."),
    ("My brother Rui lives in Berlin.", "My brother Rui visited Berlin."),
    ("I'm learning the cello.", "I'm learning the violin."),
    ("I love cats.", "I love dogs."),
    ("I had a job interview today.", "I had a job offer today."),
    ("Work was long today.", "Work was fun today."),
    ("I'm so tired today.", "I'm so happy today."),
    ("I made pasta for dinner.", "I made soup for dinner."),
    ("My friend Rita got a puppy.", "My friend Rita got married."),
    ("User's favourite food is sushi", "User's favourite food is pizza"),
    ("I'm 34 years old.", "I'm 43 years old."),
    ("I ran my first 10k race.", "I ran my first half marathon."),
    ("My mum is visiting next week.", "My dad is visiting next week."),
    ("Let's watch Dune together on Friday.", "Let's watch Dune together on Saturday."),
    ("I went to the beach.", "I went to the mountains."),
    ("I feel lonely lately.", "I feel stressed lately."),
    ("It's raining again here.", "It's sunny again here."),
    ("I bought new running shoes.", "I bought new hiking boots."),
    ("I passed my driving test!", "I failed my driving test."),
)


def cosines(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.sum(unit[0::2] * unit[1::2], axis=1)


async def calibrate() -> dict[str, object]:
    embedder = configured_embedder(os.environ)
    pairs = [*PARAPHRASES, *DISTINCT]
    vectors = await embedder.embed([text for pair in pairs for text in pair], "document")
    similarity = cosines(np.asarray(vectors))
    paraphrase, distinct = similarity[: len(PARAPHRASES)], similarity[len(PARAPHRASES) :]
    guard_paraphrase = [float(c) for (a, b), c in zip(PARAPHRASES, paraphrase, strict=True) if may_merge(a, b)]
    guard_distinct = [float(c) for (a, b), c in zip(DISTINCT, distinct, strict=True) if may_merge(a, b)]
    threshold = math.floor(min(guard_paraphrase) * 100) / 100
    if guard_distinct and max(guard_distinct) >= threshold:
        threshold = math.ceil(max(guard_distinct) * 100 + 1e-9) / 100
    return {
        "model": embedder.model,
        "paraphrase": paraphrase,
        "distinct": distinct,
        "threshold": threshold,
        "paraphrases_merged": sum(c >= threshold for c in guard_paraphrase) / len(PARAPHRASES),
        "distinct_merged": sum(c >= threshold for c in guard_distinct) / len(DISTINCT),
        "distinct_at_or_above_0.92_by_vector_alone": float(np.mean(distinct >= 0.92)),
        "distinct_passing_may_merge": len(guard_distinct),
    }


def main() -> int:
    result = asyncio.run(calibrate())
    for name in ("paraphrase", "distinct"):
        values = np.asarray(result[name])
        print(
            f"{name}: n={len(values)} min {values.min():.3f} median {np.median(values):.3f} "
            f"p90 {np.quantile(values, 0.9):.3f} max {values.max():.3f}"
        )
    for key in (
        "model",
        "threshold",
        "paraphrases_merged",
        "distinct_merged",
        "distinct_at_or_above_0.92_by_vector_alone",
        "distinct_passing_may_merge",
    ):
        print(f"{key}: {result[key]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
