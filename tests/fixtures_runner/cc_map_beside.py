"""A dataset `map:` function in a module beside the recipe (tests/test_code_caching.py)."""


def shout(row):
    return {"text": row["text"].upper()}
