"""align: pretrain, SFT, RLHF (PPO) and DPO side by side on the Hugging Face stack."""

from align.version import __version__  # noqa: F401


def __getattr__(name):
    # Lazy: `import align` stays fast and the CLI starts without loading torch for --help.
    if name == "load_recipe":
        from align.recipe import load_recipe
        return load_recipe
    if name == "run_recipe":
        from align.runner import run_recipe
        return run_recipe
    if name == "load_dataset":
        from align.data import load_dataset
        return load_dataset
    if name == "AlignError":
        from align.errors import AlignError
        return AlignError
    raise AttributeError(f"module 'align' has no attribute {name!r}")
