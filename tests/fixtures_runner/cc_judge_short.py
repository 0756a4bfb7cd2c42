"""A judge that prefers shorter responses."""


def score(prompts, responses):
    return [-float(len(r)) for r in responses]
