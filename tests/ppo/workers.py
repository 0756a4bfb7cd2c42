"""What the two-rank PPO worker scripts (torchrun subprocesses) share: a reward that counts "cat" tokens and a
callback that kills the run after iteration 3 when ``mode == "kill"`` (the script defines ``model_dir`` and ``mode``)."""

import textwrap

CAT_REWARD_AND_KILL = textwrap.dedent('''
    tok = AutoTokenizer.from_pretrained(model_dir)
    cat = tok.convert_tokens_to_ids("cat")

    def reward(prompts, completions):
        ids = [tok(c, add_special_tokens=False)["input_ids"] for c in completions]
        return [sum(i == cat for i in x) / max(len(x), 1) for x in ids]

    class DieAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if mode == "kill" and state.global_step == 3:
                raise SystemExit(0)
''')
