"""A judge that prefers longer responses (tests/test_code_caching.py copies and edits this file)."""

SCALE = 1.0


def score(prompts, responses):
    return [SCALE * len(r) for r in responses]
