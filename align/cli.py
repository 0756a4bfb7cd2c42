"""The ``align`` command: run | validate | generate | compare | export. A user mistake prints one paragraph and exits 2;
a run stopped by SIGTERM/SIGINT after saving a checkpoint exits 75 (``align.preemption``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from align.checkpoints import disk_error
from align.errors import AlignError
from align.preemption import EXIT_PREEMPTED, Preempted


def split_names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def cmd_run(args) -> int:
    from align.recipe import load_recipes
    from align.runner import run_recipe
    from align.validate import check_recipe

    recipes = load_recipes(args.recipe, args.set, output_dir=args.output_dir)
    only = split_names(args.only)
    for recipe in recipes:  # every mistake a run would meet, before anything trains (cached stages skipped)
        check_recipe(recipe, only=only, from_stage=args.from_stage, force=args.force,
                     skip_cached=True).raise_for_problems()
    finished = []
    for recipe in recipes:
        if recipe.variant:
            print(f"align: run {recipe.variant} of {len(recipes)} -> {recipe.output_dir}")
        results = run_recipe(recipe, only=only, from_stage=args.from_stage, force=args.force, checked=True,
                             wait=not args.no_wait)
        finished.append((recipe, results))
    from accelerate import PartialState

    if PartialState().is_main_process:  # initialised by run_recipe
        for recipe, results in finished:
            print(summary(recipe, results))
        if len(finished) > 1:
            from align.report.compare import compare_runs

            root = recipes[0].output_dir.parent
            page = compare_runs([str(r.output_dir) for r, _ in finished], str(root / "report"),
                                title=f"{recipes[0].name}: {len(finished)} seeds")
            print(f"align: the runs compared (verdict over seeds, frontier): {page}")
    import torch.distributed as dist

    from align.eval.sampling import shutdown

    shutdown()  # a vLLM engine first: it tears down the process groups it made (after us, it would fail on exit)
    if dist.is_initialized():  # a clean exit for every rank (gloo can abort at interpreter shutdown)
        dist.barrier()
        dist.destroy_process_group()
    return 0


def summary(recipe, results: dict) -> str:
    """The run at a glance: every stage, how long it took (or that it was cached) and where its artifacts are."""
    rows = [(name, recipe.stages[name].kind, f"{m['stage_seconds']:.1f} s" if m.get("stage_seconds") is not None
             and not m.get("cached") else "cached", str(recipe.stages[name].out_dir)) for name, m in results.items()]
    widths = [max(len(r[i]) for r in rows + [("stage", "kind", "time", "artifacts")]) for i in range(4)]
    line = lambda r: "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([f"align: done: {recipe.name}{f' ({recipe.variant})' if recipe.variant else ''}",
                      line(("stage", "kind", "time", "artifacts")), *map(line, rows)])


def cmd_validate(args) -> int:
    """A dry run: every problem a run would meet before training (all of them, one paragraph each), and the plan."""
    from align.validate import validate_file

    result = validate_file(args.recipe, args.set, output_dir=args.output_dir)
    if result.recipe is not None:
        print(result.report())
    for problem in result.problems:
        print(f"align: error: {problem}\n", file=sys.stderr)
    if result.problems:
        n = len(result.problems)
        print(f"align: {n} problem{'s' if n != 1 else ''} in {args.recipe}; nothing was trained.", file=sys.stderr)
        return 2
    return 0


def cmd_generate(args) -> int:
    from align.eval.generation import generate_chat

    for prompt, response in zip(args.prompt, generate_chat(
            args.stage_dir, args.prompt, max_new_tokens=args.max_new_tokens, greedy=args.greedy,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed, chat=not args.raw,
            chat_template=args.chat_template, model_kwargs={"trust_remote_code": args.trust_remote_code})):
        print(f"### prompt\n{prompt}\n### response\n{response}\n")
    return 0


def cmd_compare(args) -> int:
    from align.report.compare import compare_runs

    path = compare_runs(args.run_dirs, args.out, trained_on=args.trajectory_judge)
    print(f"align: comparison of {len(args.run_dirs)} runs written to {path}")
    return 0


def cmd_export(args) -> int:
    from align.export import export_stage

    result = export_stage(args.stage_dir, args.out, merge=args.merge, dtype=args.dtype, push_to_hub=args.push_to_hub,
                          base_model=args.base_model, private=args.private or None,
                          model_kwargs={"trust_remote_code": args.trust_remote_code})
    print(f"align: {args.stage_dir} exported to {result['export_dir']} ({', '.join(result['files'])})")
    if result.get("pushed_to"):
        print(f"align: pushed to {result['pushed_to']}")
    return 0


TRUST_HELP = ("run the Python code a model folder ships (auto_map in its config): only for a model whose code you trust; "
              "a recipe stage says it with model_kwargs: {trust_remote_code: true}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the libraries' own warnings and logs")
    parser = argparse.ArgumentParser(prog="align", description="Pretrain, SFT, RLHF and DPO on the Hugging Face stack.",
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run a recipe's stages (skips finished ones)"),
                            ("validate", "check a recipe without training")):
        p = sub.add_parser(name, help=help_text, parents=[common])
        p.add_argument("recipe", help="path to a recipe YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe field, e.g. --set stages.sft.args.learning_rate=1e-3 (repeatable)")
        p.add_argument("--output-dir", help="override the recipe's output_dir")
        if name == "run":
            p.add_argument("--only", help="comma-separated stages to run (their inputs must be finished)")
            p.add_argument("--from", dest="from_stage", help="re-run this stage and run every later one")
            p.add_argument("--force", action="store_true", help="re-run selected stages even if finished")
            p.add_argument("--no-wait", action="store_true",
                           help="stop (exit 2) instead of waiting when another run is building a stage of this folder")
    p = sub.add_parser("generate", help="sample responses from a stage's model", parents=[common])
    p.add_argument("stage_dir", help="a stage folder (pretrain, sft, dpo, ppo, ...) or a model folder")
    p.add_argument("--prompt", action="append", required=True, help="a user message (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    p.add_argument("--raw", action="store_true", help="continue the prompt as plain text (no chat template)")
    p.add_argument("--chat-template", help="a template TRL ships (e.g. qwen2_5), default, or a .jinja file "
                                           "(default: the model's own; align's default if it has none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    p = sub.add_parser("compare", help="merge several runs' evaluations into one reward-vs-KL frontier",
                       parents=[common])
    p.add_argument("run_dirs", nargs="+", help="run folders (each holding a finished evaluate stage)")
    p.add_argument("--out", default="runs/compare", help="folder for report.md / frontier.png / report.html")
    p.add_argument("--trajectory-judge", help="the judge PPO trained on (e.g. rm): its training trajectory is drawn "
                                              "on that judge's panel")
    p = sub.add_parser("export", help="write a stage's model as one folder to ship (safetensors, tokenizer, "
                                      "generation_config, model card); optionally push it to the Hub", parents=[common])
    p.add_argument("stage_dir", help="a finished stage folder, e.g. runs/quickstart/ppo")
    p.add_argument("out", help="the folder to write")
    p.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base: one plain model")
    p.add_argument("--dtype", help="weights as saved: fp32 (default), bf16, fp16")
    p.add_argument("--push-to-hub", metavar="ID", help="upload the folder to this Hub model repository (org/name)")
    p.add_argument("--base-model", metavar="ID", help="without --merge: the Hub id of the adapter's base when the "
                                                       "stage recorded a local folder")
    p.add_argument("--private", action="store_true", help="create the Hub repository private")
    p.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    return parser


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "generate": cmd_generate, "compare": cmd_compare,
            "export": cmd_export}


LIBRARIES = ("bitsandbytes", "transformers", "trl", "peft", "accelerate", "datasets", "evaluate", "torch", "httpx",
             "urllib3", "filelock", "huggingface_hub", "lm_eval")


SURFACED = ("is not a prefix",)  # TRL's words when the tokenized prompt is not where prompt+completion diverges
SURFACING = ("trl.trainer.sft_trainer", "trl.trainer.dpo_trainer", "trl.trainer.kto_trainer")  # loggers that say it


def surfaced_trl_warnings(record: logging.LogRecord) -> bool:
    """In quiet mode only TRL's errors pass, and its warnings that the trained context is not the sampled one."""
    return record.levelno >= logging.ERROR or any(words in record.getMessage() for words in SURFACED)


def quiet_libraries() -> None:
    """Library warnings a user cannot act on (bitsandbytes' missing CPU kernels, deprecations inside transformers,
    dataset map bars) stay out of align's output; ``--verbose`` shows them."""
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars; training bars stay
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in SURFACING:  # except TRL's warning that it trains a context other than the one sampled
        trainer = logging.getLogger(name)  # (a logger's filters see only its own records: set on the emitters)
        trainer.setLevel(logging.WARNING)
        if surfaced_trl_warnings not in trainer.filters:
            trainer.addFilter(surfaced_trl_warnings)
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=rf"({'|'.join(LIBRARIES)})(\..*)?$")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if getattr(args, "verbose", False):
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info")
    else:
        quiet_libraries()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[args.command](args)
    except AlignError as e:
        print(f"align: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("align: interrupted; finished stages are kept and an unfinished one resumes on the next run.",
              file=sys.stderr)
        return 130
    except Preempted as e:  # SIGTERM/SIGINT: a checkpoint was saved; a distinct exit code
        print(f"align: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except OSError as e:  # a full disk or read-only folder outside a stage (caches, markers)
        disk = disk_error(e, os.getcwd())
        if disk is None:
            raise
        print(f"align: error: {disk}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
